"""Secrets and reach: the API key is sent but never shown; only http(s) VLM URLs; sandboxed prompts.

The key is followed everywhere a user or a log could see it: logs at DEBUG from every
logger, reprs, every round's prompt and replies, the result's JSON, error messages, what
the command line prints and every file it writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jinja2
import pytest
from jinja2.sandbox import SandboxedEnvironment

from cropper import Cropper
from cropper.agent.prompts import PromptSet, default_prompt_dir
from cropper.cli.main import main
from cropper.core.errors import ConfigError, VLMError
from cropper.testing.openai_server import OpenAICompatibleServer
from cropper.testing.synthetic import synthetic_photo
from cropper.vlm import backend_for

KEY = "sk-cropper-test-5eCr3t-0123456789abcdef"
KEY_VARIABLES = ("CROPPER_API_KEY", "OPENAI_API_KEY")


@pytest.fixture
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _files_hold_no_key(folder: Path) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        assert KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
    return len(files)


# -- the API key ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["api_key=", *KEY_VARIABLES])
def test_the_api_key_is_sent_but_shown_nowhere(
    source: str, no_key_in_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kwargs = {"api_key": KEY} if source == "api_key=" else {}
    if source != "api_key=":
        no_key_in_environment.setenv(source, KEY)
    caplog.set_level(logging.DEBUG)  # every logger: cropper's, httpx's, httpcore's
    photo = synthetic_photo(0, size=(160, 120), discs=4)
    with OpenAICompatibleServer(api_key=KEY) as server:
        with Cropper(vlm=server.url, clip=None, head=None, index=None, **kwargs) as cropper:
            result = cropper.crop(photo, task="free")
            shown = {"repr(cropper)": repr(cropper), "repr(cropper.vlm)": repr(cropper.vlm)}
        sent = [r.headers.get("authorization") for r in server.requests]
    # It was sent (so the server answered) ...
    assert sent and set(sent) == {f"Bearer {KEY}"}
    assert [r.stage for r in result.rounds] == ["propose", "refine", "refine"]
    # ... and is nowhere else.
    shown |= {"repr(result)": repr(result), "result.to_json()": json.dumps(result.to_json())}
    for n, round_ in enumerate(result.rounds):
        shown[f"round {n} prompt"] = round_.prompt_text
        shown[f"round {n} replies and notes"] = "\n".join([*round_.replies, *round_.notes])
        shown[f"repr(round {n})"] = repr(round_)
    shown["logs"] = caplog.text
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was captured
    for where, text in shown.items():
        assert KEY not in text, f"the API key leaked into {where}"


def test_a_refused_key_is_named_in_no_error(
    no_key_in_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-9876543210fedcba"
    caplog.set_level(logging.DEBUG)
    photo = synthetic_photo(1, size=(160, 120), discs=4)
    with OpenAICompatibleServer(api_key=KEY) as server:
        with Cropper(vlm=server.url, clip=None, head=None, index=None, api_key=wrong) as cropper:
            with pytest.raises(VLMError, match="HTTP 401.*CROPPER_API_KEY") as info:
                cropper.crop(photo)
    message = str(info.value)
    assert "\n" not in message
    for text in (message, repr(info.value), caplog.text):
        assert wrong not in text and KEY not in text


def test_a_server_that_echoes_the_key_does_not_get_it_shown(
    no_key_in_environment: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cropper.testing.openai_server import Fault

    caplog.set_level(logging.DEBUG)
    echo = Fault(status=500, message=f"upstream refused Authorization: Bearer {KEY}")
    photo = synthetic_photo(2, size=(160, 120), discs=4)
    with OpenAICompatibleServer(api_key=KEY, faults=[echo] * 8) as server:
        vlm = server.url
        with Cropper(vlm=vlm, clip=None, head=None, index=None, api_key=KEY) as cropper:
            cropper.vlm.backoff_initial = cropper.vlm.backoff_max = 0.01
            with pytest.raises(VLMError, match="HTTP 500") as info:
                cropper.crop(photo)
    assert KEY not in str(info.value) and KEY not in caplog.text


def test_the_command_line_keeps_the_key_out_of_its_output_and_files(
    tmp_path: Path,
    no_key_in_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        synthetic_photo(i, size=(160, 120), discs=4).save(photos / f"p{i}.jpg")
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    with OpenAICompatibleServer(api_key=KEY) as server:
        base = ["-vv", "crop", str(photos), "--vlm", server.url, "--clip", "none",
                "--head", "none", "--index", "none", "--json"]  # fmt: skip
        first = main([*base, "--api-key", KEY, "-o", str(out / "by-option")])
        no_key_in_environment.setenv("CROPPER_API_KEY", KEY)
        second = main([*base, "-o", str(out / "by-environment")])
        chats = len(server.chat_requests)
    assert (first, second) == (0, 0)
    assert chats >= 2 * 2 * 3  # two photos, three rounds each, in both runs
    printed = capsys.readouterr()
    for where, text in (("stdout", printed.out), ("stderr", printed.err), ("logs", caplog.text)):
        assert KEY not in text, f"the API key leaked into {where}"
    assert printed.out.count('"image"') >= 4  # the crops were printed
    assert _files_hold_no_key(out) >= 2 * 3  # two crops and results.jsonl in each


def test_eval_crop_keeps_the_key_out_of_its_run_folder(
    tmp_path: Path,
    no_key_in_environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rows = []
    for i in range(2):
        synthetic_photo(i, size=(160, 120), discs=4).save(tmp_path / f"p{i}.jpg")
        rows.append({"image": f"p{i}.jpg", "crops": [[10, 10, 150, 110]]})
    (tmp_path / "crops.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    no_key_in_environment.setenv("CROPPER_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    with OpenAICompatibleServer(api_key=KEY) as server:
        root = str(tmp_path / "crops.jsonl")
        argv = ["-vv", "eval", "crop", "--dataset", "jsonl", "--root", root,
                "--vlm", server.url, "--clip", "none", "--head", "none", "--index", "none",
                "--out", str(run), "--no-progress"]  # fmt: skip
        assert main(argv) == 0
    printed = capsys.readouterr()
    assert KEY not in printed.out + printed.err + caplog.text
    assert json.loads(printed.out.strip().splitlines()[-1])["measured"] == 2
    assert _files_hold_no_key(run) >= 3  # predictions, metrics, report at least


# -- only http(s) VLM URLs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "file:///etc/passwd",
        "file:/etc/passwd",
        "ftp://example.com/v1",
        "javascript:alert(1)",
        "ws://localhost:8000/v1",
        "wss://localhost:8000/v1",
        "data:text/plain,hello",
        "gopher://localhost:70/",
    ],
)
def test_a_vlm_url_that_is_not_http_is_refused_before_anything_loads(
    spec: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"only http:// or https:// URLs are served") as info:
        Cropper(vlm=spec, clip=None, head=None, index=None)
    assert "\n" not in str(info.value) and spec in str(info.value)
    monkeypatch.setenv("CROPPER_VLM", spec)  # from the environment too
    with pytest.raises(ConfigError, match=r"only http:// or https:// URLs are served"):
        Cropper(clip=None, head=None, index=None)
    photo = tmp_path / "p.jpg"
    synthetic_photo(0, size=(64, 48), discs=2).save(photo)
    argv = ["crop", str(photo), "--vlm", spec, "--clip", "none", "--head", "none"]
    assert main([*argv, "--index", "none", "-o", str(tmp_path / "out.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only http:// or https:// URLs are served" in err[0]
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("http://user:hunter2@localhost:8000/v1", "carries credentials"),
        ("https://:hunter2@example.com/v1", "carries credentials"),
        ("http://:hunter2@/v1", "carries credentials"),
        ("ftp://me:hunter2@example.com/", "only http:// or https://"),
        ("http://", "names no host"),
        ("http:/localhost/v1", "names no host"),
        ("http://localhost:port/v1", "malformed"),
    ],
)
def test_a_malformed_or_credentialed_vlm_url_is_refused(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        backend_for(spec)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("spec", "backend"),
    [
        ("http://localhost:8000/v1", "_server"),
        ("HTTPS://example.com/v1", "_server"),
        ("vllm:Qwen/Qwen3-VL-8B-Instruct", "_vllm"),
        ("hf:Qwen/Qwen2.5-VL-7B-Instruct", "_transformers"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "_transformers"),
        ("/models/qwen", "_transformers"),
        ("C:/models/qwen", "_transformers"),  # a Windows drive is a folder, not a scheme
    ],
)
def test_servers_models_and_folders_still_pass(spec: str, backend: str) -> None:
    assert backend_for(spec).__name__ == backend


def test_a_folder_whose_name_looks_like_a_scheme_is_still_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models:qwen").mkdir()
    assert backend_for("models:qwen").__name__ == "_transformers"


# -- sandboxed prompt templates -------------------------------------------------------------

SECRET = "TOP-SECRET-0xC0FFEE"


@pytest.fixture
def prompt_folder(tmp_path: Path) -> Path:
    """A prompt folder beside a secret file, with links that lead out to it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    folder = tmp_path / "prompts"
    (folder / "free").mkdir(parents=True)
    (folder / "free" / "_inside.j2").write_text("inside {{ n_crops }}")
    (folder / "free" / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "free" / "inner-link.j2").symlink_to(folder / "free" / "_inside.j2")
    (folder / "outdir").symlink_to(outside, target_is_directory=True)
    return folder


def _render(folder: Path, template: str):
    (folder / "free" / "propose.j2").write_text(template)
    return PromptSet(folder).render("free", "propose", coords="norm1000", n_crops=6)


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ('{% include "../outside/secret.txt" %}', "no template '../outside/secret.txt'"),
        ("{% include ABSOLUTE %}", "no template '/.*secret.txt' in the prompt folder"),
        ('{% include "free/link.txt" %}', "'free/link.txt' is a link that leads outside"),
        ('{% include "outdir/secret.txt" %}', "'outdir/secret.txt' is a link that leads outside"),
        ('{% extends "outdir/secret.txt" %}', "is a link that leads outside"),
        ('{% import "free/link.txt" as x %}', "is a link that leads outside"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
        ("{{ cycler.__init__.__globals__.os }}", "unsafe"),
        ("{{ lipsum.__globals__['os'].popen('id').read() }}", "unsafe"),
        ("{{ '{0.__class__}'.format(1) }}", "unsafe"),
        ("{{ n_crops.__class__ }}", "unsafe"),
        ("line 1\n{{ range(10**9) | list | length }}", "line 2: OverflowError: Range too big"),
        ("{{ no_such_variable }}", "'no_such_variable' is undefined"),
        ("{{ n_crops.no_such_attribute }}", "no attribute 'no_such_attribute'"),
        ("a\nb\n{{ 1 / 0 }}", "line 3: ZeroDivisionError"),
        ('{% include "free/propose.j2" %}', "RecursionError"),
        ('{{ role("root") }}', "role must be system, user or assistant"),
    ],
)
def test_a_template_reaches_no_file_or_internals_outside_its_folder(
    prompt_folder: Path, template: str, words: str
) -> None:
    template = template.replace(
        "ABSOLUTE", json.dumps(str(prompt_folder.parent / "outside" / "secret.txt"))
    )
    with pytest.raises(ConfigError, match=words) as info:
        _render(prompt_folder, template)
    message = str(info.value)
    assert message.startswith(f"prompt {prompt_folder / 'free' / 'propose.j2'}")
    assert SECRET not in message and "\n" not in message


def test_the_main_template_may_not_be_a_link_out_of_the_folder(prompt_folder: Path) -> None:
    (prompt_folder / "free" / "propose.j2").symlink_to(prompt_folder / "free" / "link.txt")
    with pytest.raises(ConfigError, match="'free/propose.j2' is a link that leads outside"):
        PromptSet(prompt_folder).render("free", "propose", coords="norm1000", n_crops=6)


def test_files_and_links_inside_the_folder_still_render(
    prompt_folder: Path, tmp_path: Path
) -> None:
    conv = _render(
        prompt_folder, '{% include "free/_inside.j2" %} {% include "free/inner-link.j2" %}'
    )
    assert conv[0].text == "inside 6 inside 6"
    # The folder itself may be a link: what counts is what lies inside it.
    (tmp_path / "linked").symlink_to(prompt_folder, target_is_directory=True)
    conv = PromptSet(tmp_path / "linked").render("free", "propose", coords="norm1", n_crops=6)
    assert conv[0].text == "inside 6 inside 6"


def test_the_shipped_prompts_render_sandboxed_and_strict() -> None:
    env = PromptSet()._env
    assert isinstance(env, SandboxedEnvironment) and env.undefined is jinja2.StrictUndefined
    assert env.loader.root == default_prompt_dir().resolve()
