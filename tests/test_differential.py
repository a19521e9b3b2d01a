"""widen against the installed torch's weights-only loader, on checkpoints torch.save writes (random
nestings of dicts, lists, tuples, tensors and their views, shared objects) and on mutants of their
pickles: what torch loads, widen reads as the same tensors (names, dtypes, shapes, bytes); what torch
refuses, widen refuses. The exceptions are named: what current torch accepts and torch 1.13 does not
(BINFLOAT, Python 2 names, newer globals), and the refusals widen makes on top (listed below)."""
import io
import os
import pickletools
import random
import subprocess
import zipfile

import pytest
import torch
import xxhash
from torch import _weights_only_unpickler as installed_unpickler

from reference import SCALE, WIDEN

SANITIZED = bool(os.environ.get("WIDEN_SANITIZE"))
# fewer under the sanitizer, and under an emulated CLI (qemu: SCALE)
CHECKPOINTS, MUTANTS = (12, 6) if SANITIZED else (60, 12) if SCALE >= 1 else (12, 12)

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32",
          torch.uint8: "U8", torch.int8: "I8", torch.bool: "BOOL", torch.float64: "F64", torch.int16: "I16"}

# Refusals widen makes where torch may load: each is documented in the README's Reliability section.
# "declares": current torch checks a record's size against its storage, 1.13 does not; "not a dict" and
# "not a list": current torch checks the target of an empty SETITEMS or APPENDS, 1.13 does not.
WIDEN_ONLY_REFUSALS = ["which torch.save never writes", "declares", "not a dict", "not a list", "not a tuple", "from arguments", "BUILD", "cycle", "deeper than",
                       "both named", "dict key", "two types or sizes", "256 times", "not valid UTF-8",
                       "NUL byte", "lone surrogate", "fails its CRC-32", "does not read"]

# Globals current torch allows (widen's allowlist) that torch 1.13 does not, and its missing opcodes.
NEWER_OPCODES = {"BINFLOAT"}
# Opcodes of protocols 3 to 5 that no weights-only loader reads and widen reads as torch.load's full
# unpickler does (README: formats): a mutant holding one is not compared here (the weights-only loader
# refuses it by design); tests/test_legacy.py checks those against the full unpickler.
FULL_UNPICKLER_OPCODES = {"FRAME", "MEMOIZE", "SHORT_BINUNICODE", "BINUNICODE8", "STACK_GLOBAL", "ADDITEMS",
                          "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"}


def random_tensor(rng):
    dtype = rng.choice(list(DTYPES))
    shape = [rng.choice([0, 1, 2, 3, 5]) for _ in range(rng.randint(0, 4))]
    g = torch.Generator().manual_seed(rng.randint(0, 2 ** 31))
    t = (torch.randn(shape, generator=g) * 10).to(dtype)
    kind = rng.random()
    if kind < 0.15 and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif kind < 0.25 and t.dim() >= 1 and t.shape[0] > 1:
        t = t[1:]
    elif kind < 0.3 and t.dim() == 1 and t.shape[0] > 0:
        t = t[:1].expand(4)
    elif kind < 0.4 and dtype.is_floating_point:
        t = torch.nn.Parameter(t, requires_grad=False)
    return t


def random_value(rng, depth, pool):
    r = rng.random()
    if pool and r < 0.1:
        return rng.choice(pool)  # shared: pickled once, fetched from the memo
    if depth > 3 or r < 0.45:
        leaf = rng.random()
        value = (random_tensor(rng) if leaf < 0.6 else rng.choice([None, True, False, 7, -3, 2 ** 40, "text", ""]))
    elif r < 0.7:
        value = {rng.choice(["a", "b.c", "w", "weight", "ß", "0"]) + str(i): random_value(rng, depth + 1, pool)
                 for i in range(rng.randint(0, 4))}
        if rng.random() < 0.3:
            value = dict(value)
            value[rng.randint(0, 9)] = random_value(rng, depth + 1, pool)
    elif r < 0.85:
        value = [random_value(rng, depth + 1, pool) for _ in range(rng.randint(0, 4))]
    else:
        value = tuple(random_value(rng, depth + 1, pool) for _ in range(rng.randint(0, 3)))
    if isinstance(value, (torch.Tensor, dict, list)):
        pool.append(value)
    return value


def torch_names(obj):
    """The tensors a widen reader names in a loaded object: dotted paths, each container once."""
    out, seen = {}, set()

    def walk(o, path):
        if isinstance(o, torch.Tensor):
            if o.layout == torch.strided and not o.is_quantized and o.dtype in DTYPES:
                out[path or "tensor"] = o
            return
        if isinstance(o, (dict, list, tuple)):
            if id(o) in seen:
                return
            seen.add(id(o))
            items = o.items() if isinstance(o, dict) else enumerate(o)
            for k, v in items:
                name = str(int(k)) if isinstance(k, (bool, int)) else k if isinstance(k, str) else None
                if name is not None:
                    walk(v, f"{path}.{name}" if path else name)

    walk(obj, "")
    return out


def save_pt(path, obj):
    torch.save(obj, path)
    return path


def with_pickle(src, dst, data):
    """The archive of src with data.pkl replaced (records and CRCs as zipfile writes them)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
        for info in z.infolist():
            out.writestr(info, data if info.filename.endswith("data.pkl") else z.read(info))


def torch_reading(path):
    try:
        return True, torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal
        return False, e


def newer_than_installed(data):
    """A construct current torch reads and the installed torch does not."""
    allowed = installed_unpickler._get_allowed_globals()
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in NEWER_OPCODES or op.name in FULL_UNPICKLER_OPCODES:
                return True
            if op.name == "GLOBAL" and arg.replace(" ", ".") not in allowed:
                return True
    except Exception:  # noqa: BLE001 - a mutant pickletools cannot walk: judged by the rest
        return False
    return False


def widen_reading(path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "WIDEN_ISA")}
    proc = subprocess.run([WIDEN, "hash", path, "--json"], capture_output=True, text=True, env=env, timeout=60)
    return proc


def assert_same_tensors(proc, result, where):
    """widen's `hash --json` names the tensors torch loaded, each with the hash of its row-major bytes.
    A bool is compared as the bytes torch loaded (a mutated storage may hold bytes other than 0 and
    1, which a copy would make 1)."""
    import json
    want = torch_names(result)
    got = {t["name"]: t["xxh3_128"] for t in json.loads(proc.stdout)["tensors"]}
    assert sorted(got) == sorted(want), where
    for name, t in want.items():
        t = t.detach().view(torch.uint8) if t.dtype == torch.bool else t.detach()
        dense = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # row-major, standard strides
        assert got[name] == xxhash.xxh3_128_hexdigest(dense.reshape(-1).view(torch.uint8).numpy().tobytes()), \
            (where, name)


def mutate(rng, data, most):
    """1 to `most` bytes flipped, inserted or dropped."""
    data = bytearray(data)
    for _ in range(rng.randint(1, most)):
        at = rng.randrange(len(data))
        how = rng.random()
        if how < 0.6:
            data[at] = rng.randrange(256)
        elif how < 0.8:
            data.insert(at, rng.randrange(256))
        else:
            del data[at]
    return bytes(data)


def test_widen_reads_what_torch_reads(tmp_path):
    import json
    rng = random.Random(int(os.environ.get("WIDEN_DIFFERENTIAL_SEED", "11")))
    agreed = refused_both = 0
    for n in range(CHECKPOINTS):
        obj = {"model": random_value(rng, 0, []), "step": n}
        src = save_pt(tmp_path / f"c{n}.pt", obj)
        with zipfile.ZipFile(src) as z:
            pkl = z.read([i for i in z.namelist() if i.endswith("data.pkl")][0])
        for m in range(MUTANTS + 1):
            path, data = src, pkl
            if m:  # a mutant: bytes flipped, inserted or dropped inside the pickle
                data = mutate(rng, pkl, 3)
                path = tmp_path / "mutant.pt"
                with_pickle(src, path, data)
            if os.environ.get("WIDEN_DIFFERENTIAL_KEEP"):
                with open(os.environ["WIDEN_DIFFERENTIAL_KEEP"] + f"/{n}-{m}.pt", "wb") as f:
                    f.write(open(path, "rb").read())
            loaded, result = torch_reading(path)
            proc = widen_reading(path)
            assert proc.returncode in (0, 3), (n, m, proc.returncode, proc.stderr)
            if loaded and proc.returncode == 0:
                assert_same_tensors(proc, result, (n, m))
                agreed += 1
            elif loaded:
                assert any(w in proc.stderr for w in WIDEN_ONLY_REFUSALS), (n, m, proc.stderr)
            elif proc.returncode == 0:  # torch 2 passes _rebuild_tensor_v2 a 7th argument, its metadata
                assert newer_than_installed(data) or "takes 6 positional arguments but 7" in str(result), \
                    (n, m, str(result)[:300])
            else:
                refused_both += 1
    assert agreed >= CHECKPOINTS and refused_both > 0


# Refusals of legacy files where torch may load (README: Legacy files): a storage read twice, one never
# read, bytes after the last, a view cut short, a frame past its STOP, a persistent id outside the
# object pickle (torch fails there too), a first block that reads as tar.
LEGACY_REFUSALS = WIDEN_ONLY_REFUSALS + ["twice", "list of storages", "follow the last storage", "past the end",
                                         "FRAME", "tar", "persistent id", "checks the size"]


def test_widen_reads_legacy_files_as_torch_does(tmp_path):
    """Legacy torch.save files of random checkpoints, and mutants of them (bytes flipped, inserted or
    dropped anywhere: the pickles, the counts, the storages): what torch's weights-only loader reads,
    widen reads alike, or refuses for a reason it names; what torch refuses, widen refuses."""
    import json
    rng = random.Random(int(os.environ.get("WIDEN_DIFFERENTIAL_SEED", "13")))
    agreed = refused_both = 0
    checkpoints, mutants = (CHECKPOINTS // 3, MUTANTS // 2)
    for n in range(checkpoints):
        obj = {"model": random_value(rng, 0, []), "step": n}
        src = tmp_path / f"l{n}.pth"
        torch.save(obj, src, _use_new_zipfile_serialization=False, pickle_protocol=rng.choice([2, 3]))
        original = src.read_bytes()
        for m in range(mutants + 1):
            path = src
            if m:
                path = tmp_path / "mutant.pth"
                path.write_bytes(mutate(rng, original, 2))
            if os.environ.get("WIDEN_DIFFERENTIAL_KEEP"):
                with open(os.environ["WIDEN_DIFFERENTIAL_KEEP"] + f"/legacy-{n}-{m}.pth", "wb") as f:
                    f.write(path.read_bytes())
            loaded, result = torch_reading(path)
            proc = widen_reading(path)
            assert proc.returncode in (0, 3), (n, m, proc.returncode, proc.stderr)
            if loaded and proc.returncode == 0:
                assert_same_tensors(proc, result, (n, m))
                agreed += 1
            elif loaded:
                assert any(w in proc.stderr for w in LEGACY_REFUSALS), (n, m, proc.stderr)
            elif proc.returncode == 0:  # torch 2 passes _rebuild_tensor_v2 a 7th argument, its metadata
                assert newer_than_installed(path.read_bytes()) or "takes 6 positional arguments but 7" in str(result), \
                    (n, m, str(result)[:300])
            else:
                refused_both += 1
    assert agreed >= checkpoints and refused_both > 0
