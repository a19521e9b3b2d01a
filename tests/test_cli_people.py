"""The command line for people (issue 14): did-you-mean for a misspelt -t, -t glob patterns, --dry-run,
-q/--quiet, the summary line on a terminal, and progress that advances through long copies."""
import ctypes
import json
import os
import pty
import re
import subprocess
import sys

import numpy as np
import pytest

import folders
import reference
from reference import ROOT, load, run, save


def two_stems(rng):
    return {
        "model.conv1.weight": ("F32", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        "aux.conv1.weight": ("F32", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        "model.bn1.weight": ("F32", rng.standard_normal(8).astype(np.float32)),
        "model.bn1.bias": ("F32", rng.standard_normal(8).astype(np.float32)),
        "model.fc.weight": ("F16", rng.standard_normal((10, 8)).astype(np.float16)),
        "odd[name]*.weight": ("F32", rng.standard_normal((4, 3, 2, 2)).astype(np.float32)),
        "mask": ("BOOL", rng.random((3, 5)) > 0.5),
    }


@pytest.fixture
def model(tmp_path):
    tensors = two_stems(np.random.default_rng(7))
    path = tmp_path / "in.safetensors"
    save(str(path), tensors, {})
    return path, tensors


def listing(folder):
    return sorted(os.listdir(folder))


# ---- did you mean -------------------------------------------------------------------------------

def test_misspelt_name_suggests_the_nearest_names(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "model.conv1.weigth", "--to", "4", check=2)
    assert p.stderr == ("widen: error: " + str(path) + ": no tensor named 'model.conv1.weigth'; "
                        "did you mean 'model.conv1.weight'?\n")
    assert not (tmp_path / "o.safetensors").exists()


def test_suggestions_are_at_most_three_nearest_first(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "model.bn1.weigh", "--to", "4", check=2)
    assert p.stderr.endswith(": no tensor named 'model.bn1.weigh'; did you mean 'model.bn1.weight'?\n")
    blocks = tmp_path / "blocks.safetensors"
    save(str(blocks), {f"block.{k}.w": ("F32", np.zeros((2, 3, 1), np.float32)) for k in (10, 4, 3, 2, 1)}, {})
    assert [l.split()[0] for l in run("inspect", blocks, check=0).stdout.splitlines()[2:]] == [
        "block.1.w", "block.10.w", "block.2.w", "block.3.w", "block.4.w"]  # the model's order
    # four names at distance 1, block.10.w at 2: the first three at 1, in the model's order
    p = run("apply", blocks, "-o", tmp_path / "o.safetensors", "-t", "block.5.w", "--to", "4", check=2)
    assert p.stderr.endswith("did you mean 'block.1.w', 'block.2.w' or 'block.3.w'?\n")
    # two at 1, then the first of those at 2
    p = run("apply", blocks, "-o", tmp_path / "o.safetensors", "-t", "block.1.ww", "--to", "4", check=2)
    assert p.stderr.endswith("did you mean 'block.1.w', 'block.10.w' or 'block.2.w'?\n")


def test_no_suggestion_for_a_name_like_none(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "decoder.head.kernel", "--to", "4", check=2)
    assert p.stderr == "widen: error: " + str(path) + ": no tensor named 'decoder.head.kernel'\n"


# ---- glob patterns ------------------------------------------------------------------------------

def test_pattern_widens_every_match(tmp_path, model):
    path, tensors = model
    out = tmp_path / "o.safetensors"
    run("apply", path, "-o", out, "-t", "*.conv1.weight", "--to", "4", check=0)
    _, got, _, _ = load(str(out))
    for name in ("model.conv1.weight", "aux.conv1.weight"):
        w = tensors[name][1]
        assert got[name][1].tobytes() == np.pad(w, ((0, 0), (0, 1), (0, 0), (0, 0))).tobytes(), name
    for name in ("model.bn1.weight", "model.fc.weight", "odd[name]*.weight", "mask"):
        assert got[name][1].tobytes() == np.ascontiguousarray(tensors[name][1]).tobytes(), name
    assert "2 transformed" in run("verify", path, out, check=0).stdout


def test_pattern_matching_nothing_is_a_usage_error(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "*.conv9.*", "--to", "4", check=2)
    assert p.stderr == "widen: error: " + str(path) + ": no tensor matches the pattern '*.conv9.*'\n"
    assert listing(tmp_path) == ["in.safetensors"]


def test_pattern_matching_a_tensor_without_the_axis_names_the_pattern(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "model.*.weight", "--to", "4", check=2)
    assert "tensor 'model.bn1.weight' (matched by 'model.*.weight') has rank 1: no axis 1" in p.stderr
    assert listing(tmp_path) == ["in.safetensors"]


def test_exact_name_with_glob_characters_wins(tmp_path, model):
    path, tensors = model
    out = tmp_path / "o.safetensors"
    # as a pattern 'odd[name]*.weight' would match 'oddn...' names, not itself
    run("apply", path, "-o", out, "-t", "odd[name]*.weight", "--map", "2,1,0", check=0)
    _, got, _, _ = load(str(out))
    assert got["odd[name]*.weight"][1].tobytes() == tensors["odd[name]*.weight"][1][:, ::-1].tobytes()
    assert got["model.conv1.weight"][1].tobytes() == tensors["model.conv1.weight"][1].tobytes()


def test_overlapping_patterns_select_a_tensor_once(tmp_path, model):
    path, tensors = model
    out = tmp_path / "o.safetensors"
    run("apply", path, "-o", out, "-t", "*.conv1.weight", "-t", "model.conv1.*", "-t", "aux.conv1.weight",
        "--map", "0,1,2,mean", check=0)
    _, got, _, _ = load(str(out))
    w = tensors["aux.conv1.weight"][1]
    assert got["aux.conv1.weight"][1].shape == (8, 4, 3, 3)
    assert got["model.conv1.weight"][1].shape == (8, 4, 3, 3)
    assert got["aux.conv1.weight"][1][:, :3].tobytes() == w.tobytes()
    # a name given twice stays an error
    run("apply", path, "-o", tmp_path / "p.safetensors", "-t", "aux.conv1.weight", "-t", "aux.conv1.weight",
        "--to", "4", check=2)


# ---- --dry-run ----------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, model):
    path, _ = model
    before = listing(tmp_path)
    p = run("apply", path, "-o", tmp_path / "o.pt", "-t", "*.conv1.weight", "--to", "5", "--manifest",
            tmp_path / "m.json", "--dry-run", check=0)
    assert listing(tmp_path) == before
    lines = p.stdout.splitlines()
    assert lines[0] == f"plan: {path} -> {tmp_path / 'o.pt'} (pt), nothing written (--dry-run)"
    changed = [l for l in lines if l.startswith("  ")]
    assert sorted(changed) == ["  aux.conv1.weight: F32 [8, 3, 3, 3] -> F32 [8, 5, 3, 3]",
                               "  model.conv1.weight: F32 [8, 3, 3, 3] -> F32 [8, 5, 3, 3]"]
    assert "tensors: 2 changed, 5 copied" in lines
    written = 2 * 8 * 5 * 3 * 3 * 4
    copied = 8 * 4 + 8 * 4 + 10 * 8 * 2 + 4 * 3 * 2 * 2 * 4 + 15
    assert f"bytes: {written} to write (2.8 KiB, transformed), {copied} to copy ({copied} B, untouched)" in lines
    assert f"manifest: {tmp_path / 'm.json'}" in lines
    assert p.stderr == ""


def test_dry_run_with_cast(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "--cast", "f16", "--dry-run", check=0)
    changed = sorted(l for l in p.stdout.splitlines() if l.startswith("  "))
    assert changed == ["  aux.conv1.weight: F32 [8, 3, 3, 3] -> F16 [8, 3, 3, 3]",
                       "  model.bn1.bias: F32 [8] -> F16 [8]",
                       "  model.bn1.weight: F32 [8] -> F16 [8]",
                       "  model.conv1.weight: F32 [8, 3, 3, 3] -> F16 [8, 3, 3, 3]",
                       "  odd[name]*.weight: F32 [4, 3, 2, 2] -> F16 [4, 3, 2, 2]"]
    assert "tensors: 5 changed, 2 copied" in p.stdout
    assert listing(tmp_path) == ["in.safetensors"]


def test_dry_run_refuses_what_apply_refuses(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "-t", "aux.conv1.weight", "--map", "0,1,5",
            "--dry-run", check=2)
    assert "no channel 5" in p.stderr and p.stdout == ""
    (tmp_path / "o.safetensors").write_bytes(b"x")
    p = run("apply", path, "-o", tmp_path / "o.safetensors", "--to", "4", "-t", "aux.conv1.weight", "--dry-run",
            check=2)
    assert "exists" in p.stderr
    assert (tmp_path / "o.safetensors").read_bytes() == b"x"


def test_dry_run_of_a_model_folder(tmp_path):
    src = tmp_path / "vit"
    folders.sharded_vit(str(src))
    p = run("apply", src, "-o", tmp_path / "out", "--to", "4", "--dry-run", check=0)
    assert not (tmp_path / "out").exists()
    assert listing(tmp_path) == ["vit"]
    assert f"  {folders.PATCH}: F32 [32, 3, 4, 4] -> F32 [32, 4, 4, 4]" in p.stdout.splitlines()
    assert "tensors: 1 changed," in p.stdout


def dry_run_cases(tmp_path, path):
    """(name, arguments after INPUT) pairs whose real run fails before writing, or succeeds."""
    bf16 = tmp_path / "bf16.safetensors"
    save(str(bf16), {"stem": ("BF16", np.arange(8 * 3 * 2 * 2, dtype=np.uint16).reshape(8, 3, 2, 2))}, {})
    (tmp_path / "taken.json").write_text("{}")
    (tmp_path / "file").write_bytes(b"x")
    bins = tmp_path / "bins"
    folders.sharded_vit(str(bins), fmt="bin")
    vit = tmp_path / "vit"
    folders.sharded_vit(str(vit))
    (tmp_path / "vit_out_taken").mkdir()
    return [
        ("ok", path, ["-o", "{out}.pt", "-t", "model.conv1.weight", "--to", "4"]),
        ("npz cannot hold bf16", bf16, ["-o", "{out}.npz", "-t", "stem", "--to", "4"]),
        ("no such folder", path, ["-o", str(tmp_path / "nowhere" / "o.safetensors"), "-t", "model.conv1.weight",
                                  "--to", "4"]),
        ("folder is a file", path, ["-o", str(tmp_path / "file" / "o.safetensors"), "-t", "model.conv1.weight",
                                    "--to", "4"]),
        ("manifest exists", path, ["-o", "{out}.safetensors", "--manifest", str(tmp_path / "taken.json"), "-t",
                                   "model.conv1.weight", "--to", "4"]),
        ("manifest folder missing", path, ["-o", "{out}.safetensors", "--manifest",
                                           str(tmp_path / "nowhere" / "m.json"), "-t", "model.conv1.weight",
                                           "--to", "4"]),
        ("map past the channels", path, ["-o", "{out}.safetensors", "-t", "aux.conv1.weight", "--map", "0,1,7"]),
        ("mean on a bool tensor", path, ["-o", "{out}.safetensors", "-t", "mask", "--axis", "0", "--map", "0,mean"]),
        ("nothing to do", path, ["-o", "{out}.safetensors"]),
        ("npy output", path, ["-o", "{out}.npy", "--cast", "f16"]),
        ("folder ok with notes", bins, ["-o", "{out}", "--to", "4"]),
        ("folder to npz", vit, ["-o", "{out}", "--to", "4", "--format", "npz"]),
        ("folder target exists", vit, ["-o", str(tmp_path / "vit_out_taken"), "--to", "4"]),
        ("folder parent missing", vit, ["-o", str(tmp_path / "nowhere" / "vit"), "--to", "4"]),
    ]


def test_dry_run_agrees_with_apply(tmp_path, model):
    """--dry-run runs the library's own checks: for each case it fails exactly as the real run does (the
    same status and line), or passes with the same warnings, and writes nothing either way."""
    path, _ = model
    statuses = set()
    for k, (name, src, args) in enumerate(dry_run_cases(tmp_path, path)):
        dry_out, real_out = str(tmp_path / f"dry{k}"), str(tmp_path / f"real{k}")
        before = listing(tmp_path)
        dry = run("apply", src, *[a.format(out=dry_out) for a in args], "--dry-run", "--no-fsync", check=None)
        assert listing(tmp_path) == before, f"{name}: the dry run wrote something"
        real = run("apply", src, *[a.format(out=real_out) for a in args], "--no-fsync", check=None)
        assert dry.returncode == real.returncode, (name, dry.stderr, real.stderr)
        statuses.add(real.returncode)
        assert dry.stderr.replace(dry_out, "OUT") == real.stderr.replace(real_out, "OUT"), name
        if real.returncode == 0:
            assert dry.stdout.startswith("plan: ") and "nothing written (--dry-run)" in dry.stdout, name
        else:
            assert dry.stdout == "", name
    assert statuses == {0, 2, 4}  # the cases cover passing, usage errors and I/O


# ---- -q/--quiet ---------------------------------------------------------------------------------

def test_quiet_silences_warnings_not_errors(tmp_path, model):
    path, _ = model
    p = run("apply", path, "-o", tmp_path / "a.safetensors", "--cast", "bf16", "--no-config", check=0)
    assert "widen: warning:" in p.stderr
    p = run("apply", path, "-o", tmp_path / "b.safetensors", "--cast", "bf16", "--no-config", "-q", check=0)
    assert p.stderr == ""
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    p = run("apply", path, "-o", tmp_path / "c.safetensors", "--quiet", "-t", "nope", "--to", "4", check=2)
    assert p.stderr.startswith("widen: error:")


# ---- the summary line, on a terminal ------------------------------------------------------------

def run_on_terminal(*args):
    """Runs widen with stderr on a pseudo-terminal; returns (exit status, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([reference.WIDEN, *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait()
    os.close(master)
    return proc.returncode, b"".join(chunks).decode()


def test_summary_line_on_a_terminal_only(tmp_path, model):
    path, _ = model
    rc, text = run_on_terminal("apply", path, "-o", tmp_path / "o.safetensors", "-t", "*.conv1.weight", "--to", "4",
                               "--no-progress")
    assert rc == 0
    size = (tmp_path / "o.safetensors").stat().st_size
    line = text.strip()
    assert re.fullmatch(re.escape(f"widen: wrote {tmp_path / 'o.safetensors'}: 2 tensors changed, 5 copied, "
                                  f"{size / 1024:.1f} KiB in ") + r"\d+\.\d s" +
                        re.escape(f" (0 B cloned, 0 B copied, {size / 1024:.1f} KiB written)"), line), line
    # not a terminal: nothing
    p = run("apply", path, "-o", tmp_path / "p.safetensors", "--to", "4", "-t", "aux.conv1.weight", check=0)
    assert p.stderr == ""


def test_json_reports_the_bytes_cloned_copied_and_written(tmp_path, model):
    """apply --json: what was done, on stdout; the bytes add up to the output's size, a long untouched
    run goes through the kernel (cloned or copied, as the file system can), the rest is written."""
    big = tmp_path / "big.safetensors"
    stem = np.arange(8 * 3 * 3 * 3, dtype=np.float32).reshape(8, 3, 3, 3)
    save(str(big), {"stem": ("F32", stem), "body": ("F32", np.ones(3 << 20, np.float32))}, {})
    p = run("apply", big, "-o", tmp_path / "o.safetensors", "-t", "stem", "--to", "4", "--json", "--no-fsync", check=0)
    doc = json.loads(p.stdout)
    size = (tmp_path / "o.safetensors").stat().st_size
    assert doc["output"] == str(tmp_path / "o.safetensors")
    assert (doc["tensors_changed"], doc["tensors_copied"]) == (1, 1)
    b = doc["bytes"]
    assert b["cloned"] + b["copied"] + b["written"] == size
    assert b["cloned"] + b["copied"] >= (12 << 20) - 2 * 4096  # the body, all but its partial blocks
    assert b["written"] < 64 << 10
    p = run("apply", big, "-o", "-", "--json", "--to", "4", "-t", "stem", check=2)
    assert "--json" in p.stderr and p.stdout == ""


def test_progress_shows_syncing_not_eta_at_the_end(tmp_path, model):
    path, _ = model
    rc, text = run_on_terminal("apply", path, "-o", tmp_path / "o.safetensors", "-t", "aux.conv1.weight", "--to", "4")
    assert rc == 0
    assert "  syncing" in text and "ETA 0s" not in text.split("  syncing")[-1]
    rc, text = run_on_terminal("apply", path, "-o", tmp_path / "p.safetensors", "-t", "aux.conv1.weight", "--to", "4",
                               "--no-fsync")
    assert rc == 0 and "  syncing" not in text


# ---- progress through long copies (the library) -------------------------------------------------

sys.path.insert(0, os.path.join(ROOT, "python"))
from widen._lib import PROGRESS, ApplyOptions  # noqa: E402  (the header's layout, written once)


BIG = 150 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """One 150 MiB file for both thread counts: a small kernel and a long untouched run."""
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save(str(path), {"a.weight": ("F32", np.zeros((8, 3, 3, 3), np.float32)),
                     "big": ("U8", np.resize(np.arange(251, dtype=np.uint8), BIG))}, {})
    return path


@pytest.mark.host_only("this build's library (ctypes)")
@pytest.mark.parametrize("threads", [2] if os.environ.get("WIDEN_SANITIZE") else [1, 2])
def test_long_untouched_run_reports_progress_every_64_mib(tmp_path, big_file, threads):
    big, path = BIG, big_file
    lib = ctypes.CDLL(reference.LIBWIDEN)
    lib.widen_transform_new.restype = ctypes.c_void_p
    tr = lib.widen_transform_new()
    entries, count = ctypes.c_void_p(), ctypes.c_size_t()
    err = ctypes.create_string_buffer(4096)
    assert lib.widen_parse_map(b"0,1,2,zero", ctypes.byref(entries), ctypes.byref(count), err) == 0
    assert lib.widen_transform_add_map(ctypes.c_void_p(tr), b"a.weight", 1, entries, count, err) == 0
    libc = ctypes.CDLL(None)
    libc.free(entries)
    opts = ApplyOptions()
    lib.widen_apply_options_init(ctypes.byref(opts), ctypes.sizeof(opts))
    seen = []

    def on_progress(user, done, total):
        seen.append((done, total))
        return 0

    opts.progress = PROGRESS(on_progress)
    opts.threads = threads
    opts.fsync = 0
    st = lib.widen_apply(str(path).encode(), str(tmp_path / "o.safetensors").encode(), ctypes.c_void_p(tr),
                         ctypes.byref(opts), err)
    lib.widen_transform_free(ctypes.c_void_p(tr))
    assert st == 0, err.raw[4:200]
    total = seen[-1][1]
    assert seen[-1][0] == total and total >= big
    steps = [b - a for (a, _), (b, _) in zip([(0, 0)] + seen, seen)]
    assert max(steps) <= 64 << 20, steps
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    _, got, _, _ = load(str(tmp_path / "o.safetensors"))
    assert np.array_equal(got["big"][1], np.resize(np.arange(251, dtype=np.uint8), big))


# ---- flags in errors: the library's messages name none, the command adds its own ---------------------

def test_errors_name_the_flag_that_changes_them(tmp_path, model):
    """The library's messages say what an option is (tests/test_library.py keeps flags out of them);
    each line the command prints names the flag: in front where it parsed the value (--map, --init,
    --to, --at), after the message where the library's hint says which setting would change it."""
    path, _ = model
    out = tmp_path / "o.safetensors"

    def error(*args, status=2):
        p = run(*args, check=status)
        assert p.stderr.startswith("widen: error: ") and p.stderr.count("\n") == 1, p.stderr
        return p.stderr[len("widen: error: "):].rstrip("\n")

    conv = ("-t", "aux.conv1.weight")
    assert error("apply", path, "-o", out, *conv, "--map", "0,x") == (
        "--map: map entry 'x' is not K, K*S, zero, const:V, mean, sum or normal:STD[:SEED]")
    assert error("apply", path, "-o", out, *conv, "--map", "0,const:1e99") == (
        "--map: map entry 'const:1e99': '1e99' is not an fp32 number")
    assert error("apply", path, "-o", out, *conv, "--to", "4", "--init", "median").startswith(
        "--init: unknown init mode 'median' (use zeros, ")
    assert error("apply", path, "-o", out, *conv, "--to", "4", "--init", "copy:x") == (
        "--init: init mode copy:K: 'x' is not a channel index")
    assert error("apply", path, "-o", out, *conv, "--to", "2") == (
        f"{path}: tensor 'aux.conv1.weight': --to: 2 channels are fewer than the tensor's 3: widening does not "
        "narrow (--map narrows)")
    assert error("apply", path, "-o", out, *conv, "--to", "4", "--at", "2") == (
        f"{path}: tensor 'aux.conv1.weight': --at: 3 channels starting at 2 do not fit in 4")
    assert error("apply", path, "-o", tmp_path / "o.npy", *conv, "--to", "4") == (
        f"{tmp_path / 'o.npy'}: widen does not write .npy files: name an .npz, .safetensors or .pt output, or choose "
        "one of those formats (--format sets it)")
    # a tensor an .npz cannot hold: cast it
    bf16 = tmp_path / "bf16.safetensors"
    save(str(bf16), {"w": ("BF16", np.zeros((2, 3, 2, 2), np.uint16))}, {})
    assert error("apply", bf16, "-o", tmp_path / "o.npz", "--to", "4").endswith(
        "write safetensors or .pt, or cast it to F32 (--cast f32)")
    # an output that exists, and a manifest that does
    out.write_bytes(b"keep")
    assert error("apply", path, "-o", out, *conv, "--to", "4") == f"{out}: exists (use --force to replace it)"
    assert error("apply", path, "-o", tmp_path / "p.safetensors", *conv, "--to", "4", "--manifest", out) == (
        f"{out}: exists (use --force to replace it)")
    assert out.read_bytes() == b"keep" and not (tmp_path / "p.safetensors").exists()
    # verify of an output that records no transform
    pt = tmp_path / "o.pt"
    run("apply", path, "-o", pt, *conv, "--to", "4", check=0)
    assert error("verify", path, pt) == (
        f"{pt}: no transform recorded (no 'widen' metadata key): a manifest is needed to verify it (pass --manifest "
        "FILE)")


def test_folder_errors_name_the_flag_that_changes_them(tmp_path):
    src = tmp_path / "vit"
    folders.sharded_vit(str(src))
    p = run("apply", src, "-o", tmp_path / "out", "--to", "4", "--format", "npz", check=2)
    assert p.stderr == ("widen: error: output format npz: widen writes .npz files, not model folders; a folder's "
                        "weights are written as safetensors or pt (--format sets it)\n")
    (tmp_path / "m.json").write_text("{}")
    p = run("apply", src, "-o", tmp_path / "out", "--to", "4", "--manifest", tmp_path / "m.json", check=2)
    assert p.stderr == f"widen: error: {tmp_path / 'm.json'}: exists (use --force to replace it)\n"
    # .pt shards record no transform: the warning says verify needs a manifest, verify names the flag
    p = run("apply", src, "-o", tmp_path / "pt", "--to", "4", "--format", "pt", check=0)
    assert "no manifest is written: verify will need one" in p.stderr and "--" not in p.stderr
    p = run("verify", src, tmp_path / "pt", check=2)
    assert p.stderr.endswith("a manifest is needed to verify it (pass --manifest FILE)\n")
    # a config that cannot be read cannot follow the widened input layer
    (src / "config.json").write_text("{nope")
    p = run("apply", src, "-o", tmp_path / "out", "--to", "4", check=3)
    assert p.stderr.startswith("widen: error: ") and p.stderr.endswith(
        "; the configs cannot follow the transform (--no-config leaves the configs as they are)\n")
