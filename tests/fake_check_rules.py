"""Disclosure rules that misbehave on purpose, for the runner's fail-closed tests.

The runner imports them by registry spec ("tests.fake_check_rules:Class") in its check processes,
exactly as it imports the real rules.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from fivesafes_tes.egress.checks.base import CheckContext, Finding, HeldFile, RuleResult, Verdict

CANARY = "CANARY-0f9e8d7c-file-contents"


class _Fake:
    name: ClassVar[str] = "fake"
    version: ClassVar[str] = "7"

    def result(self, verdict: Verdict, *findings: Finding) -> RuleResult:
        return RuleResult(rule=self.name, version=self.version, verdict=verdict, findings=list(findings))


class Echo(_Fake):
    """Passes, saying what config it got and which file it read (first line of it)."""

    name = "fake_echo"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        first = file.path.read_text(errors="replace").splitlines()[0] if file.size else ""
        config["mutated"] = True  # must not leak into the next file's config
        return self.result(
            Verdict(config.get("verdict", "pass")),
            Finding(
                Verdict.PASS,
                f"{self.name}: {file.name}",
                column=first[:10],
                threshold=str(config.get("level")),
            ),
        )


class Hang(_Fake):
    name = "fake_hang"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        if config.get("pid_file"):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
            with open(config["pid_file"], "w") as handle:
                handle.write(str(child.pid))
        while True:
            time.sleep(1)


class Raise(_Fake):
    name = "fake_raise"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        print(CANARY)
        print(CANARY, file=sys.stderr)
        logging.getLogger("fake").error("found %s", CANARY)
        raise ValueError(f"cell value {CANARY} is odd")


class RaiseOn(_Fake):
    """Crashes on files whose name contains `config["on"]`; passes the others."""

    name = "fake_raise_on"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        if config["on"] in file.name:
            raise ValueError(f"cell value {CANARY} is odd")
        return self.result(Verdict.PASS)


class Garbage(_Fake):
    name = "fake_garbage"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        return "pass"  # type: ignore[return-value]


class UnknownVerdict(_Fake):
    name = "fake_unknown_verdict"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        return RuleResult(rule=self.name, version=self.version, verdict="fine")  # type: ignore[arg-type]


class WrongName(_Fake):
    name = "fake_wrong_name"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        return RuleResult(rule="file_type", version="1", verdict=Verdict.PASS)


class PassWithFailFinding(_Fake):
    name = "fake_inconsistent"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        return self.result(Verdict.PASS, Finding(Verdict.FAIL, "fake_inconsistent: a failing finding"))


class Abort(_Fake):
    name = "fake_abort"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        os.abort()


class Exit139(_Fake):
    name = "fake_exit"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        os._exit(139)


class SysExit(_Fake):
    name = "fake_sys_exit"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        sys.exit(0)


class MemoryHog(_Fake):
    name = "fake_memory"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        hoard = bytearray(8 << 30)
        return self.result(Verdict.PASS if hoard else Verdict.FAIL)


class ReadsParquet(_Fake):
    """Real work under the check process's memory limit: pyarrow reads a Parquet file."""

    name = "fake_parquet"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        import pyarrow.parquet as pq

        table = pq.read_table(file.path)
        return self.result(Verdict.PASS, Finding(Verdict.PASS, f"{self.name}: {table.num_rows} rows"))


class Threads(_Fake):
    """Passes, saying how many threads a rule may use in its check process."""

    name = "fake_threads"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        from fivesafes_tes.egress.checks._parallel import threads

        return self.result(Verdict.PASS, Finding(Verdict.PASS, f"threads={threads()}"))


class Pid(_Fake):
    """Passes, saying which check process it ran in."""

    name = "fake_pid"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        return self.result(Verdict.PASS, Finding(Verdict.PASS, f"pid={os.getpid()}"))


class Preloaded(_Fake):
    """Passes, saying whether the built-in rules were already imported when its process started."""

    name = "fake_preloaded"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        ready = all(f"fivesafes_tes.egress.checks.{m}" in sys.modules for m in ("identifiers", "_warm"))
        return self.result(Verdict.PASS, Finding(Verdict.PASS, f"preloaded={ready}"))


class Phones(_Fake):
    """Passes, saying whether it could connect to the address in its config (a parser exploit's
    way out)."""

    name = "fake_phones"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        import socket

        try:
            with socket.create_connection((config["host"], config["port"]), timeout=5):
                outcome = "connected"
        except OSError as exc:
            outcome = f"refused errno={exc.errno}"
        return self.result(Verdict.PASS, Finding(Verdict.PASS, outcome))


class Snoop(_Fake):
    """Passes, saying what a parser exploit could do beyond its file: read its own held file, read
    another file (config `secret`), create one (config `write`), signal a process (config `pid`)."""

    name = "fake_snoop"

    def check(self, file: HeldFile, config: dict[str, Any], context: CheckContext) -> RuleResult:
        def attempt(action: Callable[[], object]) -> str:
            try:
                action()
            except OSError as exc:
                return f"errno={exc.errno}"
            return "ok"

        outcomes = {
            "own": attempt(file.path.read_bytes),
            "secret": attempt(Path(config["secret"]).read_bytes),
            "write": attempt(Path(config["write"]).touch),
            "signal": attempt(lambda: os.kill(config["pid"], 0)),
        }
        message = " ".join(f"{key}:{value}" for key, value in outcomes.items())
        return self.result(Verdict.PASS, Finding(Verdict.PASS, message))
