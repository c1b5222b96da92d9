#!/usr/bin/env cwl-runner
cwlVersion: v1.2
class: CommandLineTool
label: "one row per person (record-level data: an intermediate that never leaves the TRE)"
baseCommand: python3
arguments: [$(inputs.script.path), cohort, $(inputs.omop.path), cohort.csv]
inputs:
  omop: Directory
  script:
    type: File
    default: {class: File, location: ../analysis/omop_analysis.py}
outputs:
  table:
    type: File
    outputBinding: {glob: cohort.csv}
