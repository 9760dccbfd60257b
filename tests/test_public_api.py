"""The curated public API: sorted, complete, and free of optional dependencies."""

import inspect
import subprocess
import sys

import apportion
from apportion import errors


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then the rest (ruff's RUF022 order)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_importable() -> None:
    assert apportion.__all__ == sorted(apportion.__all__, key=_isort_key)
    for name in apportion.__all__:
        assert hasattr(apportion, name), name


def test_every_error_is_exported_and_rooted() -> None:
    """Errors are ApportionErrors; a warning (UsageWarning) is exported as well."""
    for name, obj in vars(errors).items():
        if (
            inspect.isclass(obj)
            and issubclass(obj, Exception)
            and obj.__module__ == errors.__name__
        ):
            assert issubclass(obj, Warning) or issubclass(obj, apportion.ApportionError)
            assert name in apportion.__all__, name


def test_every_registered_policy_is_exported() -> None:
    for factory in apportion.POLICIES.values():
        assert factory.__name__ in apportion.__all__


def test_import_pulls_no_optional_dependency() -> None:
    code = (
        "import sys, apportion; "
        "heavy = {'litellm', 'openai', 'redis', 'sqlalchemy', 'matplotlib', 'optuna', 'scipy'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
