#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: mean HbA1c on age, sex and type 2 diabetes (least squares)
baseCommand: python3
arguments: [$(inputs.script.path), regression, $(inputs.cohort.path), regression.csv]
inputs:
  cohort: File
  script:
    type: File
    default: {class: File, location: ../analysis/omop_analysis.py}
outputs:
  table:
    type: File
    outputBinding: {glob: regression.csv}
