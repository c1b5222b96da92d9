"""Five Safes RO-Crates (5s-crate 0.4, `specs/5s-crate-0.4.md`): request crates in, an activity record
that grows as the work moves, and results crates out.

- `bagit`: BagIt zips read safely (every entry judged from the zip's central directory before a byte
  is extracted; manifests verified streaming, in flat memory) and written (sha512 + sha256 manifests).
- `profile`: the profile's MUSTs a submitter controls, checked on a request crate's metadata; client
  AssessActions removed.
- `workflow`: what runs: the workflow in `mainEntity` (a TES task document, run as given, or a CWL
  workflow, run whole by a runner image as `workflows.workflow_task` builds it) and the CreateAction's
  inputs, turned into one TES task.
- `record`: the activity record (CheckValue, ValidationCheck, SignOff, DisclosureCheck, the released
  results) built from plain facts the submission layer gathers, and the BagIt results crate.

This package depends only on `tes` and `workflows` (itself on `tes`, the runner image's name and the
runner's own constants), and the standard library, `rocrate`, `bagit`: the submission layer stores what
intake accepted and gathers the facts the record is built from.
"""
