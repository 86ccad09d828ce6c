"""README.md's examples, read from README.md itself and run as printed against a `tf up`.

A newcomer pastes them into `tf shell` while `make up` runs; so does this test, with one change:
the gateway's port is this `tf up`'s free one instead of 8000. An example that stops working
fails here.
"""

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import ROOT
from tests.support.tfup import READY_TIMEOUT_SECONDS, TF, TfUp, make_env, tf_up_running

README = (ROOT / "README.md").read_text()
PRINTED_GATEWAY = "http://127.0.0.1:8000"
# Seconds an example may take: the simulated backends answer at a real GPU's speed.
ANSWER_SECONDS = 30


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", README, flags=re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    start = README.index(f"## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def commands(block: str) -> list[str]:
    """One command per line, continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TfUp]:
    with tf_up_running(tmp_path_factory.mktemp("readme")) as tf:
        tf.wait_for_line("curl ", READY_TIMEOUT_SECONDS)
        yield tf


def in_tf_shell(tf: TfUp, script: str) -> subprocess.CompletedProcess[str]:
    """`tf shell`, with the script typed into it, as a reader pastes an example."""
    script = script.replace(PRINTED_GATEWAY, f"http://127.0.0.1:{tf.port}")
    return subprocess.run(
        [TF, "shell", "--var-dir", str(tf.var_dir)],
        input=script,
        env={**make_env(), "SHELL": "/bin/bash"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=ANSWER_SECONDS,
        check=False,
    )


def test_the_curl_example_gets_a_whole_answer(instance: TfUp) -> None:
    (curl,) = [block for block in blocks("sh") if block.startswith("curl ")]

    result = in_tf_shell(instance, curl)

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["choices"][0]["message"]["content"]
    # No max_tokens: the model's own ending, not the plan's 32,768-token cap.
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert 0 < answer["usage"]["completion_tokens"] < 1000


def test_the_python_sdk_example_streams_an_answer_and_its_usage(instance: TfUp) -> None:
    (example,) = [block for block in blocks("python") if "OpenAI(" in block]

    result = in_tf_shell(instance, f"python - <<'EXAMPLE'\n{example}EXAMPLE\n")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) > 3 and any(line not in ("", "None") for line in lines[:-1])
    assert lines[-1].startswith("CompletionUsage(completion_tokens="), lines[-1]


def test_the_operating_lines_work_as_printed(instance: TfUp) -> None:
    """Every manage.py line of "Operating it" that needs no value from an earlier one's output
    (a key id, a user) and asks nothing at a prompt."""
    (block,) = [block for block in blocks("sh") if "create_account" in block]
    runnable = [
        line
        for line in commands(block)
        if line.startswith("python manage.py") and "<" not in line and "createsuperuser" not in line
    ]
    assert len(runnable) >= 5
    outputs = instance.var_dir / "outputs"
    outputs.mkdir()

    for line in runnable:
        # Run in a folder of its own, so that the files it writes land there.
        script = f"cd {outputs} && {line.replace(' manage.py', f' {ROOT}/manage.py')}"
        result = in_tf_shell(instance, script)
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
    assert (outputs / "u.parquet").stat().st_size > 0
    assert (outputs / "report.pdf").read_bytes().startswith(b"%PDF")


def test_tf_manage_and_tf_env_reach_the_running_instance(instance: TfUp) -> None:
    manage = subprocess.run(
        [TF, "manage", "--var-dir", str(instance.var_dir), "showmigrations", "gateway"],
        env=make_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    exported = subprocess.run(
        [TF, "env", "--var-dir", str(instance.var_dir)],
        env=make_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    assert manage.returncode == 0, manage.stderr
    assert "[X] 0001_initial" in manage.stdout
    assert f"export TF_BASE_URL=http://127.0.0.1:{instance.port}/v1" in exported
    assert f"export GATEWAY_SPOOL_DIR={instance.var_dir / 'spool'}" in exported
    assert (instance.var_dir / "tf.env").stat().st_mode & 0o077 == 0  # it holds demo keys


def test_without_a_running_instance_tf_manage_says_so_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [TF, "manage", "--var-dir", str(tmp_path), "check"],
        env=make_env(),
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"tf: no `tf up` is running with {tmp_path}; start one with `make up` "
        "(or pass the --var-dir it uses)"
    ]
