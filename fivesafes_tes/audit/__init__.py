"""The audit chain: one row per security event, each sealing the one before it."""

from fivesafes_tes.audit.chain import Checkpoint, Problem, ProblemKind, VerifyReport, record, verify

__all__ = ["Checkpoint", "Problem", "ProblemKind", "VerifyReport", "record", "verify"]
