"""larder.load_file / larder.safe_open against the safetensors package, on every dtype.

Both sides run here: NumPy arrays (the DLPack capsules checked through ``numpy.from_dlpack``)
and torch tensors on the CPU against ``safetensors.torch``; ``scripts/gpu_fastload.py`` runs
the GPU side.
"""

import json
import threading

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import TensorSpec, safe_open, serialize_file
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save_file

import larder
from larder._larder import Checkpoint

NUMPY_DTYPES = ["bool", "uint8", "int8", "int16", "uint16", "float16", "int32", "uint32", "float32", "int64", "uint64", "float64"]
SHAPES = [(), (0,), (7,), (3, 5), (2, 0, 4), (2, 3, 4)]


def _numpy_tensors(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for d in NUMPY_DTYPES:
        for j, shape in enumerate(SHAPES):
            raw = rng.integers(0, 256, int(np.prod(shape)) * np.dtype(d).itemsize, dtype=np.uint8)
            if d == "bool":
                raw = raw % 2
            out[f"{d}.{j}"] = raw.view(d).reshape(shape)
    return out


def owner(a):
    """The object that owns an array's memory (through any chain of views)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base


def same(a, b):
    """Bitwise equality (the random float bits include NaNs, which never compare equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fastload")
    tensors = _numpy_tensors()
    plain = str(root / "numpy.safetensors")
    save_file(tensors, plain, metadata={"format": "np", "k": "v"})
    # bf16 and fp8, which NumPy lacks, written through the reference writer's raw interface.
    raw = {
        "bf16": ("bfloat16", [2, 3], np.arange(12, dtype=np.uint8)),
        "e4m3": ("float8_e4m3fn", [5], np.arange(5, dtype=np.uint8) + 40),
        "e5m2": ("float8_e5m2", [2, 2], np.arange(4, dtype=np.uint8) + 90),
        "empty_bf16": ("bfloat16", [0, 4], np.zeros(1, dtype=np.uint8)),
    }
    specs = {
        k: TensorSpec(dtype=d, shape=s, data_ptr=a.ctypes.data, data_len=0 if 0 in s else a.nbytes)
        for k, (d, s, a) in raw.items()
    }
    exotic = str(root / "exotic.safetensors")
    serialize_file(specs, exotic)
    # A sharded checkpoint.
    shard_dir = root / "sharded"
    shard_dir.mkdir()
    weight_map = {}
    for part in (1, 2):
        name = f"model-{part:05d}-of-00002.safetensors"
        part_tensors = {f"p{part}.{k}": np.full((part, k + 1), part * 10 + k, dtype=np.float32) for k in range(3)}
        save_file(part_tensors, str(shard_dir / name))
        weight_map.update({k: name for k in part_tensors})
    index = str(shard_dir / "model.safetensors.index.json")
    with open(index, "w") as f:
        json.dump({"metadata": {"total_size": 96}, "weight_map": weight_map}, f)
    return {"plain": plain, "exotic": exotic, "index": index, "tensors": tensors, "raw": raw, "root": root}


def test_load_file_equals_safetensors_on_every_numpy_dtype(files):
    got = larder.load_file(files["plain"], framework="numpy")
    want = st_load_file(files["plain"])
    assert sorted(got) == sorted(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        assert same(got[name], expected), name


def test_torch_is_the_default_and_equals_safetensors_torch_on_every_dtype(files):
    for name in ("plain", "exotic"):
        got = larder.load_file(files[name])  # torch is importable: torch tensors by default
        want = safetensors.torch.load_file(files[name])
        assert sorted(got) == sorted(want)
        for key, expected in want.items():
            assert isinstance(got[key], torch.Tensor) and got[key].device.type == "cpu", key
            assert got[key].dtype == expected.dtype and got[key].shape == expected.shape, key
            # Bitwise: the random float bits include NaNs.
            assert torch.equal(got[key].reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), key
    assert larder.load_file(files["exotic"])["bf16"].dtype == torch.bfloat16


def test_torch_dtype_casts_floating_tensors_only(files):
    got = larder.load_file(files["plain"], dtype=torch.float16)
    assert got["float32.5"].dtype == torch.float16 and got["int64.5"].dtype == torch.int64
    want = safetensors.torch.load_file(files["plain"])["float32.5"].to(torch.float16)
    assert torch.equal(got["float32.5"].view(torch.int16), want.view(torch.int16))
    with pytest.raises(larder.ArgumentError, match="unknown torch dtype"):
        larder.load_file(files["plain"], dtype="float17")


def test_bf16_and_fp8_arrive_as_their_bits_with_a_dtype_note(files):
    got = larder.load_file(files["exotic"], framework="numpy")
    assert got.dtypes == {"bf16": "BF16", "e4m3": "F8_E4M3", "e5m2": "F8_E5M2", "empty_bf16": "BF16"}
    assert got["bf16"].dtype == np.uint16 and got["bf16"].shape == (2, 3)
    assert got["bf16"].tobytes() == bytes(range(12))
    assert got["e4m3"].dtype == np.uint8 and got["e4m3"].tobytes() == bytes(range(40, 45))
    assert got["e5m2"].shape == (2, 2) and got["e5m2"].tobytes() == bytes(range(90, 94))
    assert got["empty_bf16"].shape == (0, 4)
    with safe_open(files["exotic"], "np") as f:
        assert set(f.keys()) == set(got)


def test_arrays_view_larders_buffer_without_a_copy(files):
    got = larder.load_file(files["plain"], framework="numpy")
    a, b = got["float32.5"], got["int64.5"]
    assert type(owner(a)).__name__ == "HostBytes" and not owner(a).pinned
    # Both live in the one buffer that holds the whole file, at their offsets in it.
    with open(files["plain"], "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    delta = header["int64.5"]["data_offsets"][0] - header["float32.5"]["data_offsets"][0]
    assert b.ctypes.data - a.ctypes.data == delta


def test_dlpack_capsules_carry_dtype_shape_and_the_buffer_itself(files):
    native = Checkpoint.open(files["plain"])
    capsules, report = native.load(True)
    arrays, _ = native.load(False)

    class Holder:
        def __init__(self, capsule):
            self.capsule = capsule

        def __dlpack__(self, **kwargs):
            return self.capsule

        def __dlpack_device__(self):
            return (1, 0)

    for name in ["float32.5", "int8.3", "uint16.2", "float64.0", "bool.5", "float16.4"]:
        got = np.from_dlpack(Holder(capsules[name]))
        want = arrays[name].view(got.dtype) if got.dtype != arrays[name].dtype else arrays[name]
        assert got.dtype == files["tensors"][name].dtype, name
        assert got.shape == files["tensors"][name].shape, name
        assert same(got, want), name
    assert json.loads(report)["path"] == "plain"


def test_safe_open_reads_single_tensors_lazily(files):
    with larder.safe_open(files["plain"], framework="numpy") as f:
        assert f.metadata() == {"format": "np", "k": "v"}
        assert f.keys() == sorted(files["tensors"])
        assert f.dtype("float16.3") == "F16" and f.shape("float16.3") == [3, 5]
        for name in ["float16.3", "uint64.5", "bool.2", "int32.1"]:
            assert same(f.get_tensor(name), files["tensors"][name]), name
        with pytest.raises(KeyError, match="nope"):
            f.get_tensor("nope")


def test_a_sharded_checkpoint_loads_through_its_index(files):
    got = larder.load_file(files["index"], framework="numpy")
    assert sorted(got) == [f"p{p}.{k}" for p in (1, 2) for k in range(3)]
    assert np.array_equal(got["p2.1"], np.full((2, 2), 21, dtype=np.float32))
    with larder.safe_open(files["index"], framework="numpy") as f:
        assert f.metadata() == {"total_size": "96"}
        assert np.array_equal(f.get_tensor("p1.2"), np.full((1, 3), 12, dtype=np.float32))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_dtype_casts_floating_point_tensors_only(files):
    got = larder.load_file(files["plain"], framework="numpy", dtype="float32")
    assert got["float16.3"].dtype == np.float32
    assert same(got["float16.3"], files["tensors"]["float16.3"].astype(np.float32))
    assert got["int16.3"].dtype == np.int16


def test_direct_io_and_small_chunks_read_the_same_bytes(files):
    want = st_load_file(files["plain"])
    loaded = larder.fastload.load(files["plain"], framework="numpy", direct=True, threads=3, chunk_mib=1)
    assert loaded.report["path"] in ("direct", "plain")
    if loaded.report["path"] == "plain":
        assert "O_DIRECT" in loaded.report["fallbacks"][0]
    for name, expected in want.items():
        assert same(loaded.tensors[name], expected), name


def test_damaged_files_raise_decode_errors_naming_file_and_tensor(files, tmp_path):
    data = open(files["plain"], "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])
    with pytest.raises(larder.DecodeError, match=r"cut\.safetensors: tensor `.*truncated"):
        larder.load_file(str(cut), framework="numpy")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(larder.DecodeError, match="limit"):
        larder.safe_open(str(junk), framework="numpy")
    with pytest.raises(larder.LarderError, match="missing.safetensors"):
        larder.load_file(str(tmp_path / "missing.safetensors"), framework="numpy")


def test_cuda_probe_explains_every_unavailable_path(files):
    probe = larder.cuda_probe(files["plain"])
    if probe["driver_error"] is None:
        assert probe["driver_version"] and probe["pinned_usable"] == bool(probe["devices"])
        assert probe["gds"][0]["what"] == "libcufile loads"
    else:
        assert not probe["pinned_usable"] and not probe["gds_usable"] and probe["devices"] == []
        assert {u.split(":")[0] for u in probe["unavailable"]} == {"cufile", "pinned"}
        # Asked for pinned host buffers without CUDA: ordinary memory, and the report says why.
        loaded = larder.fastload.load(files["plain"], framework="numpy", pinned=True)
        assert loaded.report["path"] == "plain"
        assert "pinned host memory unavailable" in loaded.report["fallbacks"][0]
        assert not owner(loaded.tensors["float32.5"]).pinned
    with pytest.raises(larder.ArgumentError, match="needs torch"):
        larder.load_file(files["plain"], device="cuda:0", framework="numpy")
    with pytest.raises(larder.ArgumentError, match="device must be"):
        larder.load_file(files["plain"], device="tpu", framework="numpy")


def test_loads_run_in_parallel_threads(files):
    want = st_load_file(files["plain"])
    results, errors = [], []

    def work():
        try:
            results.append(larder.load_file(files["plain"], framework="numpy"))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for got in results:
        assert all(same(got[k], v) for k, v in want.items())
