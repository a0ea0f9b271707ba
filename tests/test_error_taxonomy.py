"""The error taxonomy: every error vllm-helix raises on purpose is a HelixError of one family."""

import inspect

from vllm_helix import errors

FAMILIES = (errors.ConfigError, errors.PlanningError, errors.StartupError, errors.TransportError, errors.NodeError)


def test_every_error_belongs_to_exactly_one_family():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.HelixError)]
    for cls in classes:
        if cls is errors.HelixError:
            continue
        assert sum(issubclass(cls, family) for family in FAMILIES) == 1, cls


def test_option_and_file_errors_are_value_errors_and_timeouts_are_timeouts():
    assert issubclass(errors.ClusterSpecError, errors.ConfigError) and issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.TransportTimeout, TimeoutError)
    assert issubclass(errors.EngineStartError, errors.StartupError)
    assert issubclass(errors.SeamDrift, errors.StartupError)
    assert issubclass(errors.KVCacheFull, errors.NodeError)
