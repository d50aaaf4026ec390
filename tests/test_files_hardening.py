"""Hardening against bad files: damaged banks, misshapen heads, weights carrying pickled code.

Each damaged file must get one line that names it and says what to do, never a
traceback; weights whose unpickling would run code are refused before any of it runs;
and no code of the project uses pickle.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shlex
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cropper.cli.main import main
from cropper.core.boxes import Box
from cropper.core.errors import ConfigError, ExemplarIndexError
from cropper.scoring.head import load_head, random_head, save_head
from cropper.testing.synthetic import synthetic_photo
from retrieval.exemplars import Exemplar
from retrieval.index import ExemplarIndex

REPO = Path(__file__).resolve().parents[1]

# -- a damaged exemplar bank ----------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tiny_clip: str):
    from retrieval.embedder import ClipEmbedder

    return ClipEmbedder(tiny_clip)


@pytest.fixture(scope="module")
def real_bank(tmp_path_factory: pytest.TempPathFactory, clip) -> Path:
    """A tiny real bank: five synthetic photos embedded by the tiny CLIP (32-d)."""
    root = tmp_path_factory.mktemp("bank")
    exemplars = []
    for i in range(5):
        path = root / f"p{i}.png"
        synthetic_photo(i, size=(64, 48), discs=3).save(path)
        exemplars.append(Exemplar(str(path), (64, 48), (Box(0.1, 0.1, 0.9, 0.8),), (4.0,)))
    ExemplarIndex.build(exemplars, clip, root / "bank", num_workers=0, progress=False)
    return root / "bank"


def _lines(bank: Path) -> list[str]:
    return (bank / "exemplars.jsonl").read_text().splitlines()


def _set_line(number: int, text: str) -> Callable[[Path], None]:
    def damage(bank: Path) -> None:
        lines = _lines(bank)
        lines[number - 1] = text
        (bank / "exemplars.jsonl").write_text("\n".join(lines) + "\n")

    return damage


def _torn_exemplars(bank: Path) -> None:
    # A write cut short: the last line stops in the middle of its JSON.
    text = (bank / "exemplars.jsonl").read_text().rstrip("\n")
    (bank / "exemplars.jsonl").write_text(text[:-25])


def _manifest(**changes: object) -> Callable[[Path], None]:
    def damage(bank: Path) -> None:
        manifest = json.loads((bank / "manifest.json").read_text())
        manifest.update(changes)
        (bank / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _drop_manifest_key(key: str) -> Callable[[Path], None]:
    def damage(bank: Path) -> None:
        manifest = json.loads((bank / "manifest.json").read_text())
        del manifest[key]
        (bank / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _truncate_index(bank: Path) -> None:
    data = (bank / "index.faiss").read_bytes()
    (bank / "index.faiss").write_bytes(data[: len(data) * 2 // 3])


def _huge_vector_length(bank: Path) -> None:
    # The flat index stores its vectors as a length-prefixed array of count * dim floats;
    # a damaged length claims 2**36 floats (256 GiB) in a file of a few hundred bytes.
    data = bytearray((bank / "index.faiss").read_bytes())
    at = data.find(struct.pack("<Q", 5 * 32))
    assert at > 0, "the flat index layout changed: find the vector length another way"
    struct.pack_into("<Q", data, at, 2**36)
    (bank / "index.faiss").write_bytes(bytes(data))


def _append_exemplar(bank: Path) -> None:
    lines = _lines(bank)
    (bank / "exemplars.jsonl").write_text("\n".join([*lines, lines[0]]) + "\n")


BANK_DAMAGE = [
    # (what is wrong, the damage, the file named, words of the error)
    ("index truncated", _truncate_index, "index.faiss", "corrupt or truncated"),
    (
        "index garbage",
        lambda b: (b / "index.faiss").write_bytes(os.urandom(300)),
        "index.faiss",
        "corrupt or truncated",
    ),
    (
        "index empty",
        lambda b: (b / "index.faiss").write_bytes(b""),
        "index.faiss",
        "corrupt or truncated",
    ),
    ("index length field damaged", _huge_vector_length, "index.faiss", "corrupt or truncated"),
    ("index missing", lambda b: (b / "index.faiss").unlink(), "index.faiss", "incomplete"),
    ("exemplars torn line", _torn_exemplars, "exemplars.jsonl", "line 5: bad exemplar"),
    (
        "exemplars non-JSON line",
        _set_line(2, "not json at all"),
        "exemplars.jsonl",
        "line 2: bad exemplar",
    ),
    (
        "exemplars JSON not an object",
        _set_line(3, "[1, 2, 3]"),
        "exemplars.jsonl",
        "line 3: bad exemplar.*JSON object",
    ),
    (
        "exemplars huge number",
        _set_line(1, '{"image": "p0.png", "size": [1e999, 48], "crops": [[0, 0, 1, 1]]}'),
        "exemplars.jsonl",
        "line 1: bad exemplar",
    ),
    (
        "exemplars not UTF-8",
        lambda b: (b / "exemplars.jsonl").write_bytes(b"\xff\xfe\x00junk"),
        "exemplars.jsonl",
        "unreadable",
    ),
    (
        "exemplars one too many",
        _append_exemplar,
        "exemplars.jsonl",
        "has 6 exemplars but the manifest says 5",
    ),
    (
        "exemplars missing",
        lambda b: (b / "exemplars.jsonl").unlink(),
        "exemplars.jsonl",
        "incomplete",
    ),
    ("manifest missing", lambda b: (b / "manifest.json").unlink(), "manifest.json", "incomplete"),
    (
        "manifest not JSON",
        lambda b: (b / "manifest.json").write_text("{'format_version': 2"),
        "manifest.json",
        "not a readable JSON manifest",
    ),
    (
        "manifest not an object",
        lambda b: (b / "manifest.json").write_text("[2, 32, 5]"),
        "manifest.json",
        "not a JSON object",
    ),
    (
        "manifest no format version",
        _drop_manifest_key("format_version"),
        "manifest.json",
        "no valid format_version",
    ),
    (
        "manifest format from the future",
        _manifest(format_version=99),
        "manifest.json",
        "format 99 is newer",
    ),
    (
        "manifest count disagrees with index",
        _manifest(count=6),
        "index.faiss",
        "holds 5 vectors of 32 dims but the manifest says 6 of 32",
    ),
    (
        "manifest dim disagrees with the embedder",
        _manifest(dim=31),
        "manifest.json",
        r"\(31-d\), not .* \(32-d\) \(the model changed since, or the manifest is damaged\)",
    ),
    (
        "manifest names no embedder",
        _drop_manifest_key("embedder"),
        "manifest.json",
        "missing or bad 'embedder'",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "file", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BANK_DAMAGE],
)
def test_a_damaged_bank_gets_one_line_naming_the_folder_the_file_and_the_rebuild(
    real_bank: Path, tmp_path: Path, clip, damage, file: str, words: str
) -> None:
    bank = tmp_path / "bank"
    shutil.copytree(real_bank, bank)
    ExemplarIndex.load(bank, embedder=clip)  # whole, it loads
    damage(bank)
    with pytest.raises(ExemplarIndexError, match=words) as info:
        ExemplarIndex.load(bank, embedder=clip)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600
    assert str(bank) in message and file in message
    assert "rebuild it with `cropper index build" in message


@pytest.mark.slow
def test_a_bank_built_with_another_embedder_names_both(
    real_bank: Path, clip, tmp_path: Path
) -> None:
    from cropper.testing.tiny_clip import build_tiny_clip
    from retrieval.embedder import ClipEmbedder

    other = ClipEmbedder(build_tiny_clip(tmp_path / "clip16", seed=1, embed_dim=16))
    with pytest.raises(ExemplarIndexError) as info:
        ExemplarIndex.load(real_bank, embedder=other)
    message = str(info.value)
    assert f"{real_bank / 'manifest.json'}: this bank was built with embedder" in message
    assert f"{clip.name!r} (32-d), not {other.name!r} (16-d)" in message
    assert f"--clip {shlex.quote(other.name)} --out {real_bank}`" in message
    assert "\n" not in message


@pytest.mark.slow
def test_faiss_reads_no_array_larger_than_the_index_file(
    real_bank: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The guard behind "index length field damaged": while the file is read, faiss may
    # allocate no array larger than the file, and its own limit is back afterwards.
    import faiss

    before = faiss.get_deserialization_vector_byte_limit()
    seen: list[int] = []
    read = faiss.read_index

    def spy(path: str, *args):
        seen.append(faiss.get_deserialization_vector_byte_limit())
        return read(path, *args)

    monkeypatch.setattr(faiss, "read_index", spy)
    ExemplarIndex.load(real_bank)
    assert seen == [(real_bank / "index.faiss").stat().st_size]
    assert faiss.get_deserialization_vector_byte_limit() == before


@pytest.mark.slow
def test_the_command_line_reports_a_damaged_bank_in_one_line(
    real_bank: Path, tmp_path: Path, tiny_clip: str, capsys: pytest.CaptureFixture
) -> None:
    bank = tmp_path / "bank"
    shutil.copytree(real_bank, bank)
    _truncate_index(bank)
    photo = tmp_path / "photo.jpg"
    synthetic_photo(9, size=(64, 48), discs=3).save(photo)
    # Nothing listens there: the bank is checked before the server is ever asked.
    argv = ["crop", str(photo), "--vlm", "http://127.0.0.1:9/v1", "--clip", tiny_clip,
            "--head", "none", "--index", str(bank), "-o", str(tmp_path / "out.jpg")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cropper: error: ")
    assert f"{bank / 'index.faiss'}: corrupt or truncated" in err[0]
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("manifest", "words"),
    [
        ("[1, 2, 3]", "not a JSON object"),
        ('{"format_version": 2, "embedder": 5, "dim": 32, "count": 5}', "bad 'embedder'"),
        ("\xff\xfe", "not a readable JSON manifest"),
    ],
)
def test_cropper_with_the_default_clip_reports_a_damaged_manifest(
    real_bank: Path,
    tmp_path: Path,
    tiny_clip: str,
    monkeypatch: pytest.MonkeyPatch,
    manifest: str,
    words: str,
) -> None:
    from cropper import Cropper

    # The default CLIP is the bank's, read from its manifest: a damaged one must not
    # trip that step, but reach ExemplarIndex.load and its message.
    bank = tmp_path / "bank"
    shutil.copytree(real_bank, bank)
    (bank / "manifest.json").write_text(manifest, encoding="latin-1")
    monkeypatch.setenv("CROPPER_CLIP", tiny_clip)  # the fallback, so no download is tried
    with pytest.raises(ExemplarIndexError, match=words) as info:
        Cropper(vlm="http://127.0.0.1:9/v1", head=None, index=bank)
    assert str(bank / "manifest.json") in str(info.value)


# -- a head file of the wrong shape -----------------------------------------------------------


def _head(folder: Path) -> Path:
    return save_head(random_head(8, seed=3), folder / "head.safetensors")


def _rewrite_tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite the tensors, keeping the card in the header and beside."""

    def damage(path: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata()
            state = {k: handle.get_tensor(k) for k in handle.keys()}
        change(state)
        save_file(state, str(path), metadata=header)

    return damage


def _card(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        card = json.loads(path.with_suffix(".json").read_text())
        change(card)
        path.with_suffix(".json").write_text(json.dumps(card))

    return damage


def _misshapen(state: dict) -> None:
    state["linear0.weight"] = torch.zeros(32, 9)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


HEAD_DAMAGE = [
    # (what is wrong, the damage, words of the error)
    ("tensor missing", _rewrite_tensors(lambda s: s.pop("linear1.bias")), r"missing linear1\.bias"),
    (
        "tensor unexpected",
        _rewrite_tensors(lambda s: s.update(extra=torch.zeros(3))),
        r"unexpected extra\(3,\)",
    ),
    (
        "tensor misshapen",
        _rewrite_tensors(_misshapen),
        r"linear0\.weight is \(32, 9\), expected \(32, 8\)",
    ),
    (
        "tensor NaN",
        _rewrite_tensors(lambda s: s["linear0.bias"].__setitem__(0, float("nan"))),
        "linear0.bias hold NaN or infinite",
    ),
    (
        "card disagrees with tensors",
        _card(lambda c: c["config"].update(dims=[8, 16, 1])),
        r"do not fit dims \(8, 16, 1\)",
    ),
    (
        "card dims not ending in 1",
        _card(lambda c: c["config"].update(dims=[8, 32, 2])),
        "ending in 1",
    ),
    ("card dims huge", _card(lambda c: c["config"].update(dims=[8, 1e999, 1])), "bad HeadConfig"),
    ("card unknown key", _card(lambda c: c["config"].update(layers=3)), r"found \['activation'"),
    ("card without config", _card(lambda c: c.pop("config")), "with 'config'"),
    ("card from a newer cropper", _card(lambda c: c.update(version=9)), "upgrade cropper"),
    (
        "card metadata not an object",
        _card(lambda c: c.update(metadata="notes")),
        "metadata must be a JSON object",
    ),
    (
        "card not JSON",
        lambda p: p.with_suffix(".json").write_text("{dims: [8, 32, 1]"),
        "not valid JSON",
    ),
    ("file truncated", _truncate, "cannot read head .* as safetensors"),
    ("file empty", lambda p: p.write_bytes(b""), "cannot read head .* as safetensors"),
    (
        "file not safetensors",
        lambda p: p.write_bytes(b"PK\x03\x04" + os.urandom(200)),
        "cannot read head .* as safetensors",
    ),
    (
        "file a torch zip",
        lambda p: torch.save(random_head(8).state_dict(), p),
        "cannot read head .* as safetensors",
    ),
]


@pytest.mark.parametrize(
    ("damage", "words"), [pytest.param(*case[1:], id=case[0]) for case in HEAD_DAMAGE]
)
def test_a_bad_head_file_gets_one_line_naming_it(tmp_path: Path, damage, words: str) -> None:
    path = _head(tmp_path)
    load_head(path)  # whole, it loads
    damage(path)
    with pytest.raises(ConfigError, match=words) as info:
        load_head(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 600


# -- weights carrying pickled code ----------------------------------------------------------


class _RunsCode:
    """Unpickled, it runs a shell command: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _trapped(path: Path, marker: Path, how: str = "zip") -> Path:
    """Weights that look like a state dict and touch ``marker`` when unpickled."""
    state = {"layers.0.weight": torch.zeros(2, 2), "trap": _RunsCode(marker)}
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "zip":  # torch's own format since 1.6
        torch.save(state, path)
    elif how == "legacy":  # torch's format before 1.6
        torch.save(state, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, as some checkpoints are
        path.write_bytes(pickle.dumps(state))
    return path


def test_the_trap_is_live_when_loaded_unsafely(tmp_path: Path) -> None:
    # So that the tests below, which see no marker, could see one.
    marker = tmp_path / "MARKER"
    torch.load(_trapped(tmp_path / "t.pth", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("how", ["zip", "legacy", "pickle"])
def test_a_head_pth_carrying_code_is_refused_and_never_run(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "MARKER"
    path = _trapped(tmp_path / "head.pth", marker, how)
    with pytest.raises(ConfigError, match="weights_only=True") as info:
        load_head(path)
    message = str(info.value)
    assert message.startswith(f"refused {path}: it holds Python objects besides tensors")
    assert "`weights_only` set to `False`" not in message  # torch's advice, not ours to give
    assert "safetensors" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.slow
def test_clip_weights_carrying_code_are_refused_and_never_run(
    tiny_clip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip

    from cropper.testing.tiny_clip import tiny_clip_config
    from retrieval.embedder import ClipEmbedder

    marker = tmp_path / "MARKER"
    # A local-dir: folder whose weights are a .bin (torch) file rather than safetensors.
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip.removeprefix("local-dir:"), folder)
    (folder / "open_clip_model.safetensors").unlink()
    _trapped(folder / "open_clip_pytorch_model.bin", marker)
    # MODEL:FILE, a named architecture with a weights file (a tiny one, registered here).
    monkeypatch.setitem(
        open_clip.factory._MODEL_CONFIGS, "Tiny-Trap", tiny_clip_config()["model_cfg"]
    )
    weights = _trapped(tmp_path / "clip.pth", marker)
    for spec in (f"local-dir:{folder}", f"Tiny-Trap:{weights}"):
        with pytest.raises(ConfigError, match="weights_only=True") as info:
            ClipEmbedder(spec, device="cpu")
        assert str(info.value).startswith(f"refused CLIP weights of {spec!r}")
        assert "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.slow
def test_vlm_weights_carrying_code_are_refused_and_never_run(
    tiny_qwen25_vl: Path, tmp_path: Path
) -> None:
    from cropper.vlm.transformers_engine import TransformersVLM

    marker = tmp_path / "MARKER"
    folder = tmp_path / "vlm"
    shutil.copytree(tiny_qwen25_vl, folder)
    for weights in folder.glob("model*.safetensors*"):
        weights.unlink()
    _trapped(folder / "pytorch_model.bin", marker)
    with pytest.raises(ConfigError, match="weights_only=True") as info:
        TransformersVLM(str(folder), device="cpu")
    assert str(info.value).startswith(f"refused VLM weights in {str(folder)!r}")
    assert "\n" not in str(info.value)
    assert not marker.exists()


# -- no pickle in the project's code ----------------------------------------------------------

#: Modules that (un)pickle, or wrap pickle, whatever they are called for.
_PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}
#: What may be taken from pickle: the error class torch.load(weights_only=True) raises.
_PICKLE_NAMES_ALLOWED = {"UnpicklingError", "PickleError"}
#: Calls that read or write pickles whatever their arguments.
_PICKLING_CALLS = {"read_pickle", "to_pickle", "torch.save"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> object:
    for keyword in call.keywords:
        if keyword.arg == name and isinstance(keyword.value, ast.Constant):
            return keyword.value.value
    return None


def pickle_uses(source: str) -> list[str]:
    """Each use of pickle in Python source, as ``line: what``.

    Refused: importing a pickling module (except pickle's error classes), any attribute of
    pickle but those, ``allow_pickle=True``, ``torch.load`` without ``weights_only=True``,
    ``np.load`` without ``allow_pickle=False`` (numpy's default is safe, but a reader
    should not have to know it), and ``torch.save`` / pandas' pickle I/O.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        where = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] in _PICKLING_MODULES]
            found += [f"{where}: import {name}" for name in names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in _PICKLING_MODULES:
            allowed = _PICKLE_NAMES_ALLOWED if node.module == "pickle" else set()
            names = [a.name for a in node.names if a.name not in allowed]
            found += [f"{where}: from {node.module} import {name}" for name in names]
        elif isinstance(node, ast.Attribute) and _dotted(node.value) == "pickle":
            if node.attr not in _PICKLE_NAMES_ALLOWED:
                found.append(f"{where}: pickle.{node.attr}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            allow_pickle = _keyword(node, "allow_pickle")
            if allow_pickle is True:
                found.append(f"{where}: {name}(allow_pickle=True)")
            elif name in ("np.load", "numpy.load") and allow_pickle is not False:
                found.append(f"{where}: {name}() without allow_pickle=False")
            if name.endswith("torch.load") and _keyword(node, "weights_only") is not True:
                found.append(f"{where}: {name}() without weights_only=True")
            if name in _PICKLING_CALLS or name.split(".")[-1] in ("read_pickle", "to_pickle"):
                found.append(f"{where}: {name}()")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import pickle\npickle.loads(b'')", ["1: import pickle", "2: pickle.loads"]),
        ("import dill, json", ["1: import dill"]),
        ("from joblib import load", ["1: from joblib import load"]),
        ("from pickle import UnpicklingError", []),
        ("from pickle import Unpickler", ["1: from pickle import Unpickler"]),
        ("np.load(p, allow_pickle=True)", ["1: np.load(allow_pickle=True)"]),
        ("np.load(p)", ["1: np.load() without allow_pickle=False"]),
        ("np.load(p, allow_pickle=False)", []),
        ("torch.load(p)", ["1: torch.load() without weights_only=True"]),
        ("torch.load(p, weights_only=False)", ["1: torch.load() without weights_only=True"]),
        ("torch.load(p, map_location='cpu', weights_only=True)", []),
        ("torch.save(state, p)", ["1: torch.save()"]),
        ("df.to_pickle(p)", ["1: df.to_pickle()"]),
        ("x = 'import pickle'  # pickle in a string", []),
    ],
)
def test_the_pickle_scan_finds_what_it_should(source: str, expected: list[str]) -> None:
    assert pickle_uses(source) == expected


def test_no_code_of_the_project_uses_pickle() -> None:
    files = [
        path
        for folder in ("cropper", "retrieval", "benchmarks", "examples")
        for path in sorted((REPO / folder).rglob("*.py"))
    ]
    assert len(files) > 40  # the scan sees the project
    found = {
        str(path.relative_to(REPO)): uses
        for path in files
        if (uses := pickle_uses(path.read_text(encoding="utf-8")))
    }
    assert found == {}
