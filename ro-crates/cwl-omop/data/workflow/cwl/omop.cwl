#!/usr/bin/env cwl-runner
# Cohort counts and a regression over one TRE's OMOP extract. Every step runs inside the TRE;
# cohort.csv (one row per person) stays there, and only the workflow's outputs reach its airlock.
cwlVersion: v1.2
class: Workflow
label: OMOP cohort counts and HbA1c regression, per TRE

inputs:
  omop:
    type: Directory
    doc: the TRE's OMOP CDM extract (the dev TREs mount it at /data/omop)
  min_cell:
    type: int
    default: 10
    doc: counts below this are shown as "<min_cell"

outputs:
  cohort_counts:
    type: File
    outputSource: count/table
  hba1c_model:
    type: File
    outputSource: fit/table

steps:
  cohort:
    run: cohort.cwl
    in:
      omop: omop
    out: [table]
  count:
    run: counts.cwl
    in:
      cohort: cohort/table
      min_cell: min_cell
    out: [table]
  fit:
    run: regression.cwl
    in:
      cohort: cohort/table
    out: [table]
