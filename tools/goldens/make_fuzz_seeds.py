#!/usr/bin/env python3
"""Writes tests/fixtures/fuzz/pth/: crafted torch.save archives that the `.pth` reader's fuzz
test starts its mutations from, besides the real checkpoint fixture. Each is a file a
colleague could hand over that must end in a clear refusal, in bounded memory:

  zero-strides.pth    one tensor of 2^20 x 2^20 elements viewing a 4-byte storage
  dup-bomb.pth        a 64 KiB string duplicated 4096 times (DUP)
  memo-bomb.pth       the same string read back from the memo 4096 times (BINGET)
  long1-9-bytes.pth   an integer of nine bytes that does not fit 64 bits
  overlapping.pth     two storages whose zip entries point at the same bytes

Only the standard library is needed:  python3 tools/goldens/make_fuzz_seeds.py
"""
import pathlib
import struct
import zipfile

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests/fixtures/fuzz/pth"


def tensor_pickle(shape, stride):
    p = (b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
         b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQK\x00(")
    p += b"".join(b"J" + struct.pack("<i", d) for d in shape) + b"t("
    p += b"".join(b"J" + struct.pack("<i", d) for d in stride) + b"t\x89)tRs."
    return p


def archive(name, pkl, storages):
    with zipfile.ZipFile(OUT / name, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    archive("zero-strides.pth", tensor_pickle([1 << 20, 1 << 20], [0, 0]), {"0": b"\0" * 4})
    string = b"\x80\x02X" + struct.pack("<I", 1 << 16) + b"a" * (1 << 16)
    archive("dup-bomb.pth", string + b"2" * 4096 + b".", {"0": b"\0" * 4})
    archive("memo-bomb.pth", string + b"q\x00" + b"h\x00" * 4096 + b".", {"0": b"\0" * 4})
    archive("long1-9-bytes.pth", b"\x80\x02}X\x01\x00\x00\x00n\x8a\x09" + bytes(8) + b"\x01s.",
            {"0": b"\0" * 4})
    path = OUT / "overlapping.pth"
    archive("overlapping.pth", tensor_pickle([1], [1]), {"0": b"\0" * 4, "1": b"\0" * 4})
    data = bytearray(path.read_bytes())
    central = [i for i in range(len(data) - 4) if data[i:i + 4] == b"PK\x01\x02"]
    first = data[central[1] + 42:central[1] + 46]
    data[central[2] + 42:central[2] + 46] = first
    path.write_bytes(bytes(data))
    for p in sorted(OUT.iterdir()):
        print(p.name, p.stat().st_size)


if __name__ == "__main__":
    main()
