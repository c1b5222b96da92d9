"""The check runner fails closed (RELIABILITY 23): a rule that hangs, raises, dies or returns nonsense
gives FAIL with an error, never a pass; and nothing a rule saw reaches the logs (RELIABILITY 28).
Also the checks configuration: defaults, the policy file's `checks:` section, per-project overrides."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import pytest

from fivesafes_tes.agent.policy import TrePolicy
from fivesafes_tes.egress import checks
from fivesafes_tes.egress.checks import ChecksConfig, FileReport, HeldFile, Verdict, run_checks
from fivesafes_tes.egress.held import OutputKey
from tests.fake_check_rules import CANARY
from tests.held_files import held

FAKES = {
    "fake_echo": "Echo",
    "fake_hang": "Hang",
    "fake_raise": "Raise",
    "fake_garbage": "Garbage",
    "fake_unknown_verdict": "UnknownVerdict",
    "fake_wrong_name": "WrongName",
    "fake_inconsistent": "PassWithFailFinding",
    "fake_abort": "Abort",
    "fake_exit": "Exit139",
    "fake_sys_exit": "SysExit",
    "fake_memory": "MemoryHog",
    "fake_parquet": "ReadsParquet",
    "fake_threads": "Threads",
    "fake_pid": "Pid",
    "fake_preloaded": "Preloaded",
    "fake_phones": "Phones",
    "fake_snoop": "Snoop",
}


@pytest.fixture(autouse=True)
def fake_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in FAKES.items():
        monkeypatch.setitem(checks.RULES, name, f"tests.fake_check_rules:{cls}")


def text_file(tmp_path: Path, name: str, content: str) -> HeldFile:
    path = tmp_path / name
    path.write_text(content)
    return held(path)


def config(*enabled: str, **sections: object) -> ChecksConfig:
    return ChecksConfig.model_validate({"enabled": list(enabled), **sections})


def only(reports: list[FileReport], rule: str) -> list:
    return [next(r for r in report.results if r.rule == rule) for report in reports]


def test_a_hanging_rule_fails_within_its_timeout_and_the_remaining_rules_still_run(tmp_path):
    files = [text_file(tmp_path, f"t{i}.csv", "a,b\n1,2\n") for i in range(2)]
    cfg = config("fake_hang", "fake_echo", "file_type", fake_hang={"timeout_s": 1}, workers=1)
    started = time.monotonic()
    reports = run_checks(files, cfg, "alpha")
    elapsed = time.monotonic() - started
    assert elapsed < 2 * 1 + 8, elapsed  # two timeouts plus start-up slack, not a hang
    for report in reports:
        hang, echo, file_type = report.results
        assert hang.verdict is Verdict.FAIL
        assert "timed out" in hang.error
        assert "timeout_s=1" in hang.error
        assert hang.findings[0].verdict is Verdict.FAIL
        assert report.file.name in hang.findings[0].message
        assert 0.9 < hang.seconds < 5
        assert echo.verdict is Verdict.PASS
        assert file_type.verdict is Verdict.PASS
        assert report.verdict is Verdict.FAIL


def test_a_timeout_kills_what_the_rule_started_too(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    # (unconfined: the rule writes its child's pid where this test can read it)
    cfg = config("fake_hang", confine_files=False, fake_hang={"timeout_s": 1.5, "pid_file": str(pid_file)})
    [report] = run_checks(files, cfg, "alpha")
    assert report.verdict is Verdict.FAIL
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break  # killed, waiting for its parent (init) to reap it
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} started by the timed-out rule is still running")


def test_a_raising_rule_fails_with_where_it_raised_but_nothing_it_saw(tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    files = [text_file(tmp_path, "t.csv", f"name\n{CANARY}\n")]
    [report] = run_checks(files, config("fake_raise", "file_type"), "alpha")
    result = report.results[0]
    assert result.verdict is Verdict.FAIL
    assert report.verdict is Verdict.FAIL
    assert result.error.startswith("raised ValueError at fake_check_rules.py:")
    assert "in check" in result.error
    assert result.version == "7"
    everything = repr(report) + caplog.text
    out, err = capfd.readouterr()
    assert CANARY not in everything + out + err
    assert "fake_raise" in caplog.text  # the failure itself is logged, without the content


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("fake_garbage", "returned nonsense: a str, not a RuleResult"),
        ("fake_unknown_verdict", "unknown verdict 'fine'"),
        ("fake_wrong_name", "names rule 'file_type', not 'fake_wrong_name'"),
        ("fake_sys_exit", "raised SystemExit"),
    ],
)
def test_nonsense_or_a_refusal_to_judge_fails(tmp_path, rule, why):
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    [report] = run_checks(files, config(rule), "alpha")
    [result] = report.results
    assert result.verdict is Verdict.FAIL
    assert report.verdict is Verdict.FAIL
    assert why in result.error


@pytest.mark.parametrize(
    ("rule", "how"), [("fake_abort", "killed by SIGABRT"), ("fake_exit", "exit code 139")]
)
def test_a_rule_that_kills_its_process_fails_and_the_next_rule_gets_a_new_one(tmp_path, rule, how):
    files = [text_file(tmp_path, f"t{i}.csv", "a,b\n1,2\n") for i in range(2)]
    reports = run_checks(files, config(rule, "file_type", workers=1), "alpha")
    for report in reports:
        crashed, file_type = report.results
        assert crashed.verdict is Verdict.FAIL
        assert crashed.error == f"the check process died ({how})"
        assert file_type.verdict is Verdict.PASS
        assert report.verdict is Verdict.FAIL


def test_a_rule_that_runs_out_of_memory_fails_and_the_agent_is_unharmed(tmp_path):
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    [report] = run_checks(files, config("fake_memory", "file_type", worker_memory_bytes=1 << 30), "alpha")
    memory, file_type = report.results
    assert memory.verdict is Verdict.FAIL
    assert "MemoryError" in memory.error
    assert file_type.verdict is Verdict.PASS


def test_real_work_fits_in_the_default_memory_limit(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"n": list(range(1000))}), path)
    [report] = run_checks([held(path)], config("fake_parquet"), "alpha")
    assert report.verdict is Verdict.PASS, report.results[0].error
    assert report.results[0].findings[0].message == "fake_parquet: 1000 rows"


def test_a_rule_whose_module_is_missing_fails_closed(tmp_path, monkeypatch):
    monkeypatch.setitem(checks.RULES, "small_cell", "fivesafes_tes.egress.checks.no_such_module:Nothing")
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    [report] = run_checks(files, config("file_type", "small_cell"), "alpha")
    file_type, small_cell = report.results
    assert file_type.verdict is Verdict.PASS
    assert small_cell.verdict is Verdict.FAIL
    assert "ModuleNotFoundError" in small_cell.error
    assert report.verdict is Verdict.FAIL


def test_a_finding_worse_than_the_verdict_raises_the_verdict(tmp_path):
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    [report] = run_checks(files, config("fake_inconsistent"), "alpha")
    assert report.results[0].verdict is Verdict.FAIL
    assert report.results[0].error is None


def test_a_test_only_rule_gets_its_config_per_project_and_cannot_change_it(tmp_path):
    files = [text_file(tmp_path, f"t{i}.csv", f"row{i},x\n") for i in range(3)]
    cfg = config(
        "fake_echo",
        "file_type",
        fake_echo={"level": 3, "timeout_s": 5},
        projects={"beta": {"fake_echo": {"level": 9, "verdict": "review"}}},
    )
    alpha = run_checks(files, cfg, "alpha")
    beta = run_checks(files, cfg, "beta")
    assert [r.file.name for r in alpha] == [f.name for f in files]  # one report per file, in order
    assert [r.findings[0].threshold for r in only(alpha, "fake_echo")] == ["3", "3", "3"]
    assert [r.findings[0].column for r in only(alpha, "fake_echo")] == ["row0,x", "row1,x", "row2,x"]
    assert {r.verdict for r in alpha} == {Verdict.PASS}
    assert [r.findings[0].threshold for r in only(beta, "fake_echo")] == ["9", "9", "9"]
    assert {r.verdict for r in beta} == {Verdict.REVIEW}
    assert only(beta, "fake_echo")[0].version == "7"


def test_no_enabled_rule_means_a_person_must_look(tmp_path):
    files = [text_file(tmp_path, "t.csv", "a,b\n1,2\n")]
    [report] = run_checks(files, config(), "alpha")
    assert report.results == []
    assert report.verdict is Verdict.REVIEW
    assert run_checks([], config("file_type"), "alpha") == []


def test_captured_stdout_and_stderr_go_through_the_same_rules(tmp_path):
    out = tmp_path / "step-0.stdout"
    out.write_text("fitting model\ndone\n")
    err = tmp_path / "step-0.stderr"
    err.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(64))
    files = [held(out, "step-0.stdout"), held(err, "step-0.stderr")]
    reports = run_checks(files, ChecksConfig(enabled=["file_type", "acro"]), "alpha")
    assert [r.verdict for r in reports] == [Verdict.PASS, Verdict.FAIL]
    messages = " ".join(f.message for f in reports[1].results[0].findings)
    assert "step-0.stderr is ELF executable" in messages
    assert "captured stderr says" in messages


def test_many_files_share_a_few_processes_quickly(tmp_path):
    files = [text_file(tmp_path, f"t{i}.csv", "a,b\n1,2\n") for i in range(40)]
    started = time.monotonic()
    cfg = config("fake_pid", "file_type", "acro", workers=2)
    reports = run_checks(files, cfg, "alpha")
    assert time.monotonic() - started < 10
    assert all(r.verdict is Verdict.PASS for r in reports)
    pids = {r.findings[0].message for r in only(reports, "fake_pid")}
    # one check process per worker for all 40 files and every rule, none of them this process
    assert len(pids) == cfg.workers, pids
    assert f"pid={os.getpid()}" not in pids


# --- configuration ------------------------------------------------------------------------------


def test_defaults_are_documented_and_strict():
    cfg = ChecksConfig()
    assert cfg.enabled == ["file_type", "acro", "small_cell", "record_level", "identifiers"]
    assert set(cfg.enabled) == set(checks.RULES) - set(FAKES)
    assert cfg.file_type.max_bytes == 100 * 1024 * 1024
    assert "text/csv" in cfg.file_type.allowed_types
    assert "image/png" in cfg.file_type.review_types
    assert cfg.small_cell.threshold == 10
    assert cfg.small_cell.zeros == "review"
    assert all(cfg.identifiers.kinds.values())
    assert "nhs_number" in cfg.identifiers.kinds
    assert {cfg.timeout_for(name) for name in cfg.enabled} == {60.0}
    sections = {"file_type", "acro", "small_cell", "record_level", "identifiers"}
    for section in (cfg, cfg.file_type, cfg.acro, cfg.small_cell, cfg.record_level, cfg.identifiers):
        undocumented = {n for n, f in type(section).model_fields.items() if not f.description} - sections
        assert not undocumented, (type(section), undocumented)


def test_the_policy_files_checks_section_with_a_project_override(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        """
allowed_images: ["registry.tre.example/*"]
checks:
  enabled: [file_type, acro, small_cell]
  file_type: {max_bytes: 1000, extension_mismatch: fail}
  small_cell: {threshold: 10, timeout_s: 30, min_distinct: 3}
  projects:
    diabetes-cancer:
      small_cell: {threshold: 20}
      identifiers: {kinds: {email: false}}
"""
    )
    cfg = TrePolicy.load(policy).checks  # parsed once, with the policy
    assert cfg.file_type.max_bytes == 1000
    assert cfg.timeout_for("small_cell") == 30
    assert cfg.rule_config("small_cell")["min_distinct"] == 3  # the tabular rules may add keys
    project = cfg.for_project("diabetes-cancer")
    assert project.small_cell.threshold == 20
    assert project.timeout_for("small_cell") == 30
    assert project.rule_config("small_cell")["min_distinct"] == 3
    assert project.file_type.max_bytes == 1000
    assert project.file_type.extension_mismatch == "fail"
    assert project.identifiers.kinds == {**ChecksConfig().identifiers.kinds, "email": False}
    assert project.projects == {}
    assert cfg.for_project("other").small_cell.threshold == 10
    assert cfg.fingerprint() == cfg.for_project("other").fingerprint() != project.fingerprint()
    assert project.rule_config("identifiers") == {
        "kinds": {
            "nhs_number": True,
            "nric_fin": True,
            "email": False,
            "phone": True,
            "postcode": True,
            "date_of_birth": True,
        },
        "timeout_s": 60.0,
    }
    assert TrePolicy.model_validate({"allowed_images": []}).checks == ChecksConfig()


def test_the_tabular_rules_get_only_what_the_tre_wrote_so_their_own_defaults_apply():
    cfg = ChecksConfig.model_validate({"record_level": {"max_rows": 50}, "projects": {"p": {"workers": 3}}})
    assert cfg.rule_config("small_cell") == {"timeout_s": 60.0}
    assert cfg.rule_config("record_level") == {"max_rows": 50, "timeout_s": 60.0}
    assert cfg.for_project("p").rule_config("record_level") == {"max_rows": 50, "timeout_s": 60.0}
    assert cfg.for_project("p").workers == 3
    assert (
        cfg.rule_config("file_type")["max_bytes"] == 100 * 1024 * 1024
    )  # this package's rules get everything


@pytest.mark.parametrize(
    ("section", "complaint"),
    [
        ({"enabled": ["file_type", "nosuch"]}, "unknown rules ['nosuch']"),
        ({"enabled": ["acro", "acro"]}, "names a rule twice"),
        ({"file_type": {"max_byte": 5}}, "max_byte"),
        ({"file_type": {"timeout_s": 0}}, "timeout_s"),
        ({"nosuch": {"timeout_s": 1}}, "checks.nosuch is neither a setting nor a registered rule"),
        ({"projects": {"beta": {"small_cell": {"threshold": 0}}}}, "checks.projects.beta"),
        ({"projects": {"beta": {"projects": {}}}}, "cannot itself have projects"),
    ],
)
def test_configuration_mistakes_are_refused_with_what_to_fix(section, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        ChecksConfig.model_validate(section)


def test_rule_and_load_rule():
    assert checks.rule("file_type").name == "file_type"
    assert checks.rule("acro").version == "1"
    with pytest.raises(LookupError, match="no disclosure rule named 'nosuch'"):
        checks.rule("nosuch")
    with pytest.raises(ValueError, match="not 'module:Class'"):
        checks.load_rule("no-colon")


@pytest.mark.parametrize("threads", [1, 3])
def test_a_check_process_uses_the_threads_the_tre_allows(tmp_path: Path, threads: int) -> None:
    [report] = run_checks(
        [text_file(tmp_path, "a.txt", "x")], config("fake_threads", threads=threads), "alpha"
    )
    assert [f.message for f in report.results[0].findings] == [f"threads={threads}"]


def test_check_processes_start_with_the_rules_already_imported(tmp_path: Path) -> None:
    """Forked from a server that imported the rules (and set Arrow up) once: a hold's checks cost
    milliseconds, not the ~0.4 s of imports a fresh process would pay on every hold."""
    [report] = run_checks([text_file(tmp_path, "a.txt", "x")], config("fake_preloaded"), "alpha")
    assert [f.message for f in report.results[0].findings] == ["preloaded=True"]


def test_the_tabular_rules_run_within_a_one_gib_address_space(tmp_path: Path) -> None:
    """Check processes inherit the fork server's memory: nothing reserved there may eat the limit."""
    rows = "".join(f"r{i % 7},{20 + i}\n" for i in range(2000))
    file = text_file(tmp_path, "counts.csv", f"region,n_patients\n{rows}east,4\n")
    enabled = ("small_cell", "record_level", "identifiers")
    [report] = run_checks([file], config(*enabled, worker_memory_bytes=1 << 30), "alpha")
    assert [(r.rule, r.error) for r in report.results] == [(rule, None) for rule in enabled]
    assert report.results[0].verdict is Verdict.FAIL  # the count of 4 was read and judged


def test_a_memory_limit_too_tight_for_threads_never_hangs_a_rule(tmp_path: Path) -> None:
    """Under a limit that leaves no room for threads, rules work serially or fail with their error,
    never by waiting out a timeout (a thread that cannot get memory leaves `Thread.start()` waiting
    forever)."""
    rows = "".join(f"r{i % 7},{20 + i}\n" for i in range(2000))
    file = text_file(tmp_path, "counts.csv", f"region,n_patients\n{rows}")
    enabled = ("small_cell", "record_level", "identifiers")
    sections = {rule: {"timeout_s": 20} for rule in enabled}
    tight = config(*enabled, worker_memory_bytes=384 << 20, threads=2, **sections)
    [report] = run_checks([file], tight, "alpha")
    for result in report.results:  # judged (the file is small) or failed closed with the reason
        assert "timed out" not in (result.error or ""), result


@pytest.mark.parametrize("deny", [True, False])
def test_a_check_process_can_open_no_connection(tmp_path: Path, deny: bool) -> None:
    """A file that exploited a parser could not send what it read anywhere: socket() is refused."""
    import errno
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        host, port = server.getsockname()
        section = {"fake_phones": {"host": host, "port": port}}
        checks_config = config("fake_phones", deny_network=deny, **section)
        [report] = run_checks([text_file(tmp_path, "a.txt", "x")], checks_config, "alpha")
    [finding] = report.results[0].findings
    assert finding.message == (f"refused errno={errno.EPERM}" if deny else "connected")


@pytest.mark.parametrize("confine", [True, False])
def test_a_check_process_reads_only_its_files_and_changes_none(tmp_path: Path, confine: bool) -> None:
    """A file that exploited a parser could read neither the agent's files nor another child's
    outputs, could write nowhere, and (where the kernel scopes signals) could not signal the agent."""
    import errno

    from fivesafes_tes.egress.checks._landlock import abi_version

    secret = tmp_path / "agent" / "agent.db"
    secret.parent.mkdir()
    secret.write_bytes(b"the agent's own records")
    section = {"secret": str(secret), "write": str(tmp_path / "agent" / "planted"), "pid": os.getpid()}
    checks_config = config("fake_snoop", confine_files=confine, fake_snoop=section)
    [report] = run_checks([text_file(tmp_path, "a.txt", "x")], checks_config, "alpha")
    [finding] = report.results[0].findings
    if not confine:  # the positive control: the same rule, unconfined, does all of it
        assert finding.message == "own:ok secret:ok write:ok signal:ok"
        return
    signal = f"errno={errno.EPERM}" if abi_version() >= 6 else "ok"
    assert finding.message == f"own:ok secret:errno={errno.EACCES} write:errno={errno.EACCES} signal:{signal}"
    assert not (tmp_path / "agent" / "planted").exists()


def test_a_held_file_that_is_a_link_grants_nothing_through_it(tmp_path: Path) -> None:
    """A task may leave a symlink where an output was; the check process must not be able to read
    the link's target (here, the agent's database) through it."""
    import errno

    secret = tmp_path / "agent" / "agent.db"
    secret.parent.mkdir()
    secret.write_bytes(b"the agent's own records")
    link = tmp_path / "outputs" / "table.csv"
    link.parent.mkdir()
    link.symlink_to(secret)
    held = HeldFile(OutputKey("/outputs/table.csv"), 23, "", link)
    section = {"secret": str(secret), "write": str(tmp_path / "agent" / "planted"), "pid": os.getpid()}
    [report] = run_checks([held], config("fake_snoop", confine_files=True, fake_snoop=section), "alpha")
    [finding] = report.results[0].findings
    assert finding.message.startswith(f"own:errno={errno.EACCES} secret:errno={errno.EACCES}")


def test_the_confinement_grants_the_code_imported_not_every_folder_on_sys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """multiprocessing puts the agent's starting folder on a check process's sys.path; that folder
    (perhaps the agent's data folder) must not become readable."""
    import fivesafes_tes
    from fivesafes_tes.egress.checks._landlock import code_paths

    monkeypatch.syspath_prepend(str(tmp_path))
    folders, files = code_paths()
    assert Path(fivesafes_tes.__file__).parent in folders  # the package, even from a checkout
    assert all(tmp_path != f and tmp_path not in f.parents for f in [*folders, *files])
    assert Path(fivesafes_tes.__file__).parent.parent not in folders  # not the checkout around it


def test_real_rules_judge_real_files_inside_the_confinement(tmp_path: Path) -> None:
    """The built-in rules need nothing beyond their files: a table with a small count and a
    direct identifier is judged, not failed for want of access."""
    file = text_file(tmp_path, "counts.csv", "region,n_patients,contact\nNorth,4,a.person@example.org\n")
    enabled = ("file_type", "acro", "small_cell", "record_level", "identifiers")
    [report] = run_checks([file], config(*enabled, confine_files=True), "alpha")
    assert [r.error for r in report.results] == [None] * len(enabled), report.results
    verdicts = {r.rule: r.verdict for r in report.results}
    assert verdicts["small_cell"] is Verdict.FAIL
    assert verdicts["identifiers"] is Verdict.FAIL
