set -e
persons=$(($(wc -l < /data/omop/person.csv) - 1))
diabetes=$(awk -F, 'NR>1 && $3==201826 {print $2}' /data/omop/condition_occurrence.csv | sort -u | wc -l)
echo "persons,diabetes" > /outputs/prevalence.csv
echo "$persons,$diabetes" >> /outputs/prevalence.csv
awk -F, 'NR>1 {c[$2","int($3/10)*10]++}
  END {print "gender_concept_id,birth_decade,count"; for (k in c) print k","c[k]}'   /data/omop/person.csv > /outputs/by_decade.csv
echo "counted $persons people"
