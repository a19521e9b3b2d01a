"""A pickle assembler and a zip writer for the tests: checkpoints as torch 2.x writes them (which
torch 1.13 cannot), and as attackers write them (duplicate keys and entries, cycles, memo tricks).
Written from the pickle opcode table and FORMATS.md, not from widen's code.

Values: None, bool, int, float, str; tuples, lists and dicts (shared Python objects are pickled once
and fetched from the memo, as pickle does, so a list can contain itself); Global(module, name);
Call(callable, args, items=None, state=None) for REDUCE (then SETITEMS of `items`, then BUILD);
NewObj(cls, args); Persid(tuple); Raw(bytes) for opcodes spelled out by hand."""
import io
import struct
import zipfile


class Global:
    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    def __init__(self, fn, args=(), items=None, state=None):
        self.fn, self.args, self.items, self.state = fn, args, items, state


class NewObj(Call):
    pass


class Persid:
    def __init__(self, tup):
        self.tup = tup


class Raw:
    def __init__(self, data):
        self.data = data


def dumps(obj, proto=2):
    out = io.BytesIO()
    memo = {}

    def put(o):
        memo[id(o)] = (len(memo), o)
        n = memo[id(o)][0]
        out.write(b"q" + bytes([n]) if n < 256 else b"r" + struct.pack("<I", n))

    def get(o):
        n = memo[id(o)][0]
        out.write(b"h" + bytes([n]) if n < 256 else b"j" + struct.pack("<I", n))

    def save(o):
        if id(o) in memo and not isinstance(o, (bool, int, float, type(None))):
            return get(o)
        if o is None:
            out.write(b"N")
        elif o is True or o is False:
            out.write(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            if 0 <= o < 256:
                out.write(b"K" + bytes([o]))
            elif 0 <= o < 65536:
                out.write(b"M" + struct.pack("<H", o))
            elif -2 ** 31 <= o < 2 ** 31:
                out.write(b"J" + struct.pack("<i", o))
            else:
                n = (o.bit_length() + 8) // 8
                out.write(b"\x8a" + bytes([n]) + o.to_bytes(n, "little", signed=True))
        elif isinstance(o, float):
            out.write(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            data = o.encode("utf-8", "surrogatepass")
            out.write(b"X" + struct.pack("<I", len(data)) + data)
            put(o)
        elif isinstance(o, bytes):  # a str whose UTF-8 is given as it is (for invalid UTF-8)
            out.write(b"X" + struct.pack("<I", len(o)) + o)
        elif isinstance(o, tuple):
            if not o:
                out.write(b")")
                return
            if len(o) > 3:
                out.write(b"(")
            for x in o:
                save(x)
            out.write(b"t" if len(o) > 3 else bytes([0x84 + len(o)]))
            put(o)
        elif isinstance(o, list):
            out.write(b"]")
            put(o)
            if o:
                out.write(b"(")
                for x in o:
                    save(x)
                out.write(b"e")
        elif isinstance(o, dict):
            out.write(b"}")
            put(o)
            if o:
                out.write(b"(")
                for k, v in o.items():
                    save(k)
                    save(v)
                out.write(b"u")
        elif isinstance(o, Global):
            out.write(b"c" + o.module.encode() + b"\n" + o.name.encode() + b"\n")
            put(o)
        elif isinstance(o, Call):
            save(o.fn)
            save(tuple(o.args))
            out.write(b"\x81" if isinstance(o, NewObj) else b"R")
            put(o)
            if o.items:
                out.write(b"(")
                for k, v in o.items:
                    save(k)
                    save(v)
                out.write(b"u")
            if o.state is not None:
                save(o.state)
                out.write(b"b")
        elif isinstance(o, Persid):
            save(o.tup)
            out.write(b"Q")
        elif isinstance(o, Raw):
            out.write(o.data)
        else:
            raise TypeError(type(o))

    out.write(b"\x80" + bytes([proto]))
    save(obj)
    out.write(b".")
    return out.getvalue()


def ordered_dict(items=None, metadata=None):
    """An OrderedDict as torch.save pickles one: OrderedDict() then SETITEMS, then the _metadata BUILD."""
    state = {"_metadata": metadata} if metadata is not None else None
    return Call(Global("collections", "OrderedDict"), (), list(items or []), state)


STORAGES = {"F32": ("FloatStorage", 4), "F16": ("HalfStorage", 2), "BF16": ("BFloat16Storage", 2),
            "I64": ("LongStorage", 8), "U8": ("ByteStorage", 1), "I32": ("IntStorage", 4)}


def storage(key, dtype, numel):
    return Persid(("storage", Global("torch", STORAGES[dtype][0]), key, "cpu", numel))


def untyped(key, nbytes):
    return Persid(("storage", Global("torch.storage", "UntypedStorage"), key, "cpu", nbytes))


def tensor_v2(pid, size, stride=None, offset=0, metadata=None):
    if stride is None:
        stride, step = [], 1
        for d in reversed(size):
            stride.insert(0, step)
            step *= d or 1
    args = [pid, offset, tuple(size), tuple(stride), False, ordered_dict()]
    if metadata is not None:
        args.append(metadata)
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), tuple(args))


def tensor_v3(pid, size, dtype, stride=None, offset=0):
    call = tensor_v2(pid, size, stride, offset)
    return Call(Global("torch._utils", "_rebuild_tensor_v3"), call.args + (Global("torch", dtype),))


def parameter(tensor):
    return Call(Global("torch._utils", "_rebuild_parameter"), (tensor, True, ordered_dict()))


def from_type_v2(tensor_call, cls=("torch", "Tensor"), state=None):
    """torch 2's spelling of a tensor with Python attributes: _rebuild_from_type_v2(func, type, args, state)."""
    return Call(Global("torch._tensor", "_rebuild_from_type_v2"),
                (tensor_call.fn, Global(*cls), tensor_call.args, state if state is not None else {}))


def write_pt(path, pickle_bytes, records, prefix="archive", version=b"3\n", extra=None, order=None,
             byteorder=b"little", attributes=None):
    """A torch.save-like zip: data.pkl, byteorder, data/<key> records, version (Python's zipfile:
    stored entries without torch's alignment, which readers must not need). `attributes` sets the
    external attributes of named entries."""
    entries = [(f"{prefix}/data.pkl", pickle_bytes), (f"{prefix}/byteorder", byteorder)]
    entries += [(f"{prefix}/data/{k}", v) for k, v in records.items()]
    if version is not None:
        entries.append((f"{prefix}/version", version))
    entries += list((extra or {}).items())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in (order(entries) if order else entries):
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            if attributes and name in attributes:
                info.external_attr = attributes[name]
            z.writestr(info, data)
    return path
