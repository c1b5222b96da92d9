#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: people by sex and age band, with each condition; small counts suppressed
baseCommand: python3
arguments: [$(inputs.script.path), counts, $(inputs.cohort.path), cohort_counts.csv, --min-cell, $(inputs.min_cell)]
inputs:
  cohort: File
  min_cell: int
  script:
    type: File
    default: {class: File, location: ../analysis/omop_analysis.py}
outputs:
  table:
    type: File
    outputBinding: {glob: cohort_counts.csv}
