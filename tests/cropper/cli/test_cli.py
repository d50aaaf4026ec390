"""The command line, driven against a real OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cropper.agent.composition import load_compositions
from cropper.agent.prompts import default_prompt_dir
from cropper.cli.main import main
from cropper.testing.openai_server import OpenAICompatibleServer


@pytest.fixture(scope="module")
def server():
    with OpenAICompatibleServer() as srv:
        yield srv


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i, size in enumerate([(320, 240), (200, 300)]):
        path = tmp_path / f"p{i}.jpg"
        Image.new("RGB", size, (30 * i, 100, 200)).save(path)
        paths.append(path)
    return paths


def run(server, *args):
    return main(["crop", *map(str, args), "--vlm", server.url, "--clip", "none", "--head", "none"])


def test_aspect_crop_written_to_out(server, photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert run(server, photos[0], "--task", "aspect", "--ratio", "16:9", "-o", out) == 0
    w, h = Image.open(out).size
    assert abs(w - h * 16 / 9) <= 1 and w <= 320 and h <= 240
    assert str(out) in capsys.readouterr().out


def test_json_lines_for_several_photos(server, photos, capsys):
    assert run(server, *photos, "--task", "subject", "--subject", "0.4,0.5", "--json") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in photos]
    for line, path in zip(lines, photos, strict=True):
        assert set(line) == {"image", "name", "task", "box", "score", "focus", "fallback", "notes"}
        assert line["task"] == "subject"
        left, top, right, bottom = line["box"]
        w, h = Image.open(path).size
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        assert 0 <= line["score"] <= 1


def test_a_bad_photo_fails_alone(server, photos, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "crops"
    out.mkdir()
    code = run(server, photos[0], bad, missing, photos[1], "-o", out)
    captured = capsys.readouterr()
    assert code == 1
    written = sorted(p.name for p in out.iterdir() if p.name != ".cropper.lock")
    assert written == ["p0.jpg", "p1.jpg", "results.jsonl", "settings.json"]
    logged = [json.loads(x)["image"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert logged == [str(photos[0]), str(photos[1])]
    errors = captured.err.strip().splitlines()
    # Each failure as it happens, then a summary that lists them again.
    summary = errors[errors.index("cropper: 2 of 4 photos failed:") :]
    assert len(summary) == 3
    assert str(bad) in summary[1] and "not an image" in summary[1]
    assert str(missing) in summary[2] and "no such file" in summary[2]


def test_output_that_would_overwrite_an_input_is_refused(server, photos, capsys):
    assert run(server, photos[0], "-o", photos[0]) == 2
    assert "would overwrite the input photo" in capsys.readouterr().err


def test_unreachable_server_is_one_clear_line(photos, capsys):
    code = main(
        [
            "crop",
            str(photos[0]),
            "--vlm",
            "http://127.0.0.1:9/v1",
            "--clip",
            "none",
            "--head",
            "none",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "127.0.0.1:9" in err and len(err.splitlines()) == 1


def test_bad_url_scheme_is_refused(photos, capsys):
    assert main(["crop", str(photos[0]), "--vlm", "ftp://example/v1"]) == 2
    assert "http:// or https://" in capsys.readouterr().err


def test_photos_sharing_a_name_do_not_overwrite_each_other(server, photos, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / photos[0].name
    Image.new("RGB", (50, 50)).save(twin)
    assert run(server, photos[0], twin, "-o", tmp_path / "out") == 2
    assert "would be written for both" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_top_k_and_compose_through_a_real_server(server, photos, tmp_path, capsys):
    out = tmp_path / "crops"
    out.mkdir()
    assert run(server, photos[0], "--top-k", "3", "--compose", "--json", "-o", out) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert line["composition"] in {c.name for c in load_compositions(default_prompt_dir())}
    assert 1 <= len(line["top"]) <= 3 and line["top"][0]["box"] == line["box"]
    extra = sorted(p.name for p in out.iterdir() if ".top" in p.name)
    assert extra == [f"p0.top{k}.jpg" for k in range(2, len(line["top"]) + 1)]
    compose_requests = [
        r
        for r in server.chat_requests
        if "composition" in json.dumps(r.body.get("response_format"))
    ]
    assert compose_requests, "the composition step asked the server"


def test_timeout_and_max_retries_reach_the_server_backend(photos, capsys):
    from cropper.testing.openai_server import Fault

    with OpenAICompatibleServer(faults=[Fault(status=503)] * 5) as srv:
        options = ["--index", "none", "--max-retries", "1", "--timeout", "5"]
        code = run(srv, photos[0], *options)
        asked = len(srv.chat_requests)
    assert code == 1 and asked == 2  # the first try and one retry; the photo failed
    assert "gave up after 2 attempts" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [(["--timeout", "0"], "must be a number > 0"), (["--max-retries", "-1"], "whole number >= 0")],
)
def test_bad_backend_options_are_usage_errors(server, photos, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        run(server, photos[0], *extra)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_backend_options_for_a_local_model_are_refused(tmp_path):
    from cropper import ConfigError, Cropper

    with pytest.raises(ConfigError, match="takes no max_retries"):
        Cropper(vlm=str(tmp_path), clip=None, head=None, index=None,
                vlm_options={"max_retries": 2})  # fmt: skip


# -- flags mean what they say -------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "task"),
    [(["--ratio", "16:9"], "aspect"), (["--subject", "0.4,0.5"], "subject"), ([], "free")],
)
def test_ratio_or_subject_alone_implies_its_task(server, photos, capsys, flags, task):
    assert run(server, photos[0], *flags, "--json") == 0
    line = json.loads(capsys.readouterr().out)
    assert line["task"] == task
    if task == "aspect":
        left, top, right, bottom = line["box"]
        assert abs((right - left) - 16 / 9 * (bottom - top)) <= 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "free", "--ratio", "16:9"], "--ratio belongs to --task aspect, not --task"),
        (["--task", "aspect", "--subject", "0.4,0.5"], "--subject belongs to --task subject"),
        (["--ratio", "16:9", "--subject", "0.4,0.5"], "give one of them"),
    ],
)
def test_flags_that_contradict_each_other_are_one_line_errors(
    server, photos, capsys, flags, message
):
    assert run(server, photos[0], *flags) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "task=" not in err  # flags, not Python


def test_an_out_folder_made_with_other_settings_is_refused_or_redone(server, photos, capsys):
    out = photos[0].parent / "crops"
    assert run(server, *photos, "--out", out, "--json") == 0
    capsys.readouterr()
    recorded = json.loads((out / "settings.json").read_text())["settings"]
    assert recorded["--task"] == "free"
    asked = len(server.chat_requests)
    # Another task into the same folder: refused before any work, the difference named.
    assert run(server, *photos, "--out", out, "--ratio", "16:9") == 2
    err = capsys.readouterr().err
    assert "--ratio unset then, '16:9' now" in err and "--task 'free' then, 'aspect' now" in err
    assert "--redo" in err and len(server.chat_requests) == asked
    # --redo crops every photo again, with the new settings, and records them.
    assert run(server, *photos, "--out", out, "--ratio", "16:9", "--redo", "--json") == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [x["task"] for x in lines] == ["aspect", "aspect"]
    assert json.loads((out / "settings.json").read_text())["settings"]["--ratio"] == "16:9"
    # The same settings again: everything is done, nothing is asked.
    asked = len(server.chat_requests)
    assert run(server, *photos, "--out", out, "--ratio", "16:9") == 0
    assert len(server.chat_requests) == asked


def test_fallbacks_are_summed_up_and_strict_makes_them_fail(photos, tmp_path, capsys):
    with OpenAICompatibleServer(responder=lambda request: ["no box"] * request["n"]) as srv:
        assert run(srv, *photos, "--json") == 0
        captured = capsys.readouterr()
        lines = [json.loads(x) for x in captured.out.splitlines()]
        assert all(line["fallback"].startswith("the whole photo") for line in lines)
        assert "cropper: 2 of 2 photos fell back:" in captured.err
        assert all(f"  {p}: the whole photo, as propose round 0" in captured.err for p in photos)
        assert run(srv, *photos, "--strict") == 1
        assert "--strict: exit 1" in capsys.readouterr().err


def test_a_failed_photo_gets_a_debug_folder_with_its_trace(photos, tmp_path):
    from cropper.testing.openai_server import Fault

    debug = tmp_path / "debug"
    with OpenAICompatibleServer(faults=[Fault(status=400, message="prompt too long")]) as srv:
        assert run(srv, photos[0], "--debug-dir", debug, "--max-retries", "0") == 1
    trace = json.loads((debug / "p0.jpg" / "trace.json").read_text())
    assert "prompt too long" in trace["error"] and trace["image"] == str(photos[0])
    assert [r["stage"] for r in trace["rounds"]] == ["propose"]
    assert (debug / "p0.jpg" / "round-0-propose" / "prompt.txt").is_file()


def test_model_and_no_structured_outputs_reach_the_server(photos):
    with OpenAICompatibleServer(models=["a-text-llm", "the-vlm"]) as srv:
        assert run(srv, photos[0]) == 2  # several models and none named: refused
        assert srv.chat_requests == []
        assert run(srv, photos[0], "--model", "the-vlm", "--no-structured-outputs") == 0
        body = srv.chat_requests[0].body
    assert body["model"] == "the-vlm" and "response_format" not in body
