"""synk.init and the device queries; fresh processes where JAX's start matters."""

import jax
import numpy as np
import pytest
from helpers import in_a_fresh_process, run_python

import synk


def test_device_queries():
    assert synk.device_count() == len(synk.devices()) == jax.device_count()
    assert synk.devices() == jax.devices()
    assert 0 <= synk.process_index() < synk.process_count() == jax.process_count()


@in_a_fresh_process
def test_import_starts_neither_a_backend_nor_mpi():
    res = run_python("""
        import sys, synk, jax
        assert "mpi4py" not in sys.modules, "mpi4py imported on import"
        # JAX refuses this setting once a backend has started.
        jax.config.update("jax_num_cpu_devices", 3)
        assert jax.device_count() == 3
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@in_a_fresh_process
def test_init_simulates_cpu_devices_and_is_idempotent():
    res = run_python("""
        import synk
        synk.init(cpu_devices=3)
        synk.init(cpu_devices=3)  # same settings: a no-op
        print(synk.device_count())
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"


@in_a_fresh_process
def test_environment_variable_sets_the_device_count():
    res = run_python("import synk; print(synk.device_count())", SYNK_CPU_DEVICES="5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5"


@in_a_fresh_process
@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SYNK_CPU_DEVICES": "many"},
            "SYNK_CPU_DEVICES='many' is not a positive integer. Set it to the number of "
            "CPU devices to simulate (e.g. SYNK_CPU_DEVICES=8), or unset it.",
        ),
        (
            {"SYNK_CPU_DEVICES": "2", "SYNK_TIMEOUT": "0"},
            "SYNK_TIMEOUT='0' is not a positive integer. Set it to the seconds after "
            "which the other processes stop when one has died (e.g. SYNK_TIMEOUT=60), or "
            "unset it.",
        ),
    ],
)
def test_bad_environment_variable_is_a_clear_error(env, message):
    res = run_python("import synk; synk.init(distributed=True)", **env)
    assert res.returncode != 0
    assert message in res.stderr


@in_a_fresh_process
def test_init_after_the_backend_started_says_so_and_what_to_do():
    res = run_python("""
        import jax, synk
        jax.devices()
        synk.init(cpu_devices=3)
    """)
    assert res.returncode != 0
    assert "RuntimeError: synk.init(cpu_devices=3) came too late" in res.stderr
    assert "before anything else uses JAX" in res.stderr


@in_a_fresh_process
def test_init_again_with_other_settings_is_an_error():
    res = run_python("""
        import synk
        synk.init(cpu_devices=2)
        synk.init(cpu_devices=4)
    """)
    assert res.returncode != 0
    assert "synk.init was already called with cpu_devices=2" in res.stderr
    assert "restart the process" in res.stderr


@pytest.mark.parametrize("bad", [0, -2, 2.5, "8", True])
def test_init_refuses_a_bad_device_count(bad):
    with pytest.raises(ValueError, match=r"cpu_devices=.*expected a positive integer"):
        synk.init(cpu_devices=bad)


def test_init_in_this_process_with_the_same_settings_is_a_no_op():
    devices, count = synk.devices(), synk.device_count()
    local = count // synk.process_count()
    synk.init(cpu_devices=local)  # what tests/conftest.py asked for: accepted as it is
    assert synk.devices() == devices and synk.device_count() == count
    with pytest.raises(RuntimeError, match=rf"already called with cpu_devices={local}.*restart"):
        synk.init(cpu_devices=local + 1)
    assert synk.devices() == devices  # the refused request changed nothing


@in_a_fresh_process
def test_bad_local_devices_setting_is_a_clear_error():
    res = run_python("import synk; synk.init(distributed=True)", SYNK_LOCAL_DEVICES="gpu0")
    assert res.returncode != 0
    assert "SYNK_LOCAL_DEVICES='gpu0': expected 'all' or device ids like '0,1,2,3'" in res.stderr


def test_process_share_is_this_process_rows_of_the_global_batch():
    count, rank = synk.process_count(), synk.process_index()
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    per = 12 // count
    mine = synk.process_share({"rows": x}, axis=0)
    np.testing.assert_array_equal(mine["rows"], x[rank * per : (rank + 1) * per])
    cols = synk.process_share(x.T, axis=-1)
    np.testing.assert_array_equal(cols, x.T[:, rank * per : (rank + 1) * per])
    # The shares, passed by every process, make the global batch: serial equivalence.
    f = synk.function(lambda a: (a**2).sum(0), reduce="sum")
    np.testing.assert_allclose(np.asarray(f(mine["rows"])), (x**2).sum(0), rtol=1e-5)


@pytest.mark.skipif(synk.process_count() == 1, reason="several processes: one process keeps all")
def test_process_share_refuses_a_batch_that_does_not_divide():
    with pytest.raises(ValueError, match=r"x\['b'\] has 3 rows along axis 0.*multiple of 2"):
        synk.process_share({"a": np.ones(4), "b": np.ones(3)})


def test_every_private_jax_name_synk_reaches_still_resolves():
    # synk reaches a few private JAX names (all in synk/_src/compat.py), each with a
    # quiet fallback; a JAX release that moves one must fail here, not degrade.
    from synk._src import compat

    assert compat.missing_private_names() == []
