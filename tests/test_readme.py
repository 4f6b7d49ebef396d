"""The README's promises: its SDK example runs, its commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from service import Pipeline, run_pipeline

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
README = README_PATH.read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_sdk_example_runs() -> None:
    (example,) = [b for b in code_blocks("python") if "@pipeline(on_init=load_model" in b]
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    flagging = namespace["flagging"]
    assert isinstance(flagging, Pipeline)
    inv = run_pipeline(flagging, state=namespace["load_model"]())
    assert inv.outputs == {"flags": [False, True], "summary": {"label": "flags", "count": 1}}


def test_ci_runs_the_readme_test_command() -> None:
    first = code_blocks("bash")[0].strip().splitlines()
    test_command = first[first.index("# Run the whole test suite") + 1]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_serve_command_names_the_installed_script_and_a_real_pipeline() -> None:
    import tomllib

    from service.sdk.loader import load_pipeline

    first = code_blocks("bash")[0].strip().splitlines()
    serve_command = first[
        first.index(next(line for line in first if "Start the server" in line)) + 1
    ]
    program, _, rest = serve_command.rpartition(" && ")[2].partition(" serve ")
    scripts = tomllib.loads((README_PATH.parent / "pyproject.toml").read_text())["project"][
        "scripts"
    ]
    assert program.removeprefix(".venv/bin/") in scripts, serve_command
    assert isinstance(load_pipeline(rest.split()[0]), Pipeline)


def test_settings_table_lists_every_setting() -> None:
    from service import Settings

    for name in Settings.model_fields:
        if name == "pipeline":
            continue  # the SPEC argument of `serve`
        flag = "--" + name.replace("_", "-")
        assert f"| `{flag}` | `PIPESERVE_{name.upper()}` |" in README, name


def test_webhook_verification_snippet_verifies_a_delivery() -> None:
    import time

    from service.runs.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

    (snippet,) = [b for b in code_blocks("python") if "def verify(" in b]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    body, timestamp = b'{"run_id": "r"}', str(int(time.time()))
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature("s3cret", timestamp, body)}
    assert namespace["verify"]("s3cret", body, headers)
    assert not namespace["verify"]("other", body, headers)
    assert not namespace["verify"]("s3cret", body + b" ", headers)
