"""The exception hierarchy: every error a LarderError, and the built-in class each kind also is."""

import errno
import pickle

import pytest

import larder
from conftest import make_dataset


def test_each_class_is_a_larder_error_and_its_builtin_kind():
    expected = {
        larder.ConfigError: (),
        larder.StoreError: (),
        larder.DecodeError: (),
        larder.RemoteError: (),
        larder.EncoderError: (),
        larder.ArgumentError: (ValueError,),
        larder.FileError: (OSError,),
        larder.MissingFileError: (FileNotFoundError, larder.FileError, OSError),
        larder.TunerExhaustedError: (RuntimeError,),
    }
    for cls, builtins in expected.items():
        assert issubclass(cls, larder.LarderError), cls
        assert cls.__module__ == "larder" and getattr(larder, cls.__name__) is cls
        for b in builtins:
            assert issubclass(cls, b), (cls, b)
    assert not issubclass(larder.TunerExhaustedError, ValueError)
    assert not issubclass(larder.FileError, FileNotFoundError)


def test_an_argument_error_is_a_value_error_from_python_and_from_rust(store_path):
    with pytest.raises(ValueError, match="format must be"):
        larder.DataLoader(store_path, format="jax")  # checked in Python
    with pytest.raises(ValueError, match="print_every"):
        larder.Metrics(print_every=-1.0)  # checked by the engine
    with pytest.raises(larder.ArgumentError):
        larder.DataLoader(store_path, batch_size=0)


def test_a_missing_config_is_a_file_not_found_error_with_errno_and_filename(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError) as caught:
        larder.load_config(missing)
    e = caught.value
    assert isinstance(e, larder.MissingFileError) and isinstance(e, larder.LarderError)
    assert e.errno == errno.ENOENT and e.filename == str(missing)
    assert str(missing) in str(e) and not str(e).startswith("[Errno"), "larder's own message"
    with pytest.raises(FileNotFoundError):
        larder.scan(missing)


def test_a_folder_where_a_file_belongs_is_a_file_error_not_a_missing_one(tmp_path):
    with pytest.raises(OSError) as caught:
        larder.Metrics(tmp_path, print_every=None)  # a folder, not a file
    e = caught.value
    assert isinstance(e, larder.FileError) and not isinstance(e, FileNotFoundError)
    assert e.errno == errno.EISDIR and e.filename == str(tmp_path)


def test_a_missing_store_is_a_store_error_naming_it(tmp_path):
    with pytest.raises(larder.StoreError, match="nowhere"):
        larder.Store.open(tmp_path / "nowhere")
    with pytest.raises(larder.StoreError, match="nowhere"):
        larder.DataLoader(tmp_path / "nowhere")


def test_a_corrupt_shard_is_a_store_error(tmp_path):
    # Regression: CorruptShard and CorruptCatalog fell through to the bare LarderError.
    out = tmp_path / "store"
    larder.prepare(make_dataset(str(tmp_path), n=3), out)
    shard = sorted((out / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(larder.StoreError, match="does not match its checksum"):
        list(larder.DataLoader(out, batch_size=1))


def test_errors_survive_pickling_as_torch_workers_send_them():
    e = pickle.loads(pickle.dumps(larder.ArgumentError("bad")))
    assert type(e) is larder.ArgumentError and str(e) == "bad"
