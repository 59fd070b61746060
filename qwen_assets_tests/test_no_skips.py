"""QWEN_ASSETS_NO_SKIPS turns every kind of skip into a failure, and only when it is on."""

import pytest

SKIPPING = {
    "test_skipped_module": "import pytest\npytest.skip('no browser', allow_module_level=True)\n",
    "test_skipped_test": "import pytest\n\ndef test_it():\n    pytest.skip('no archive')\n",
    "test_passing": "def test_it():\n    assert True\n",
}


@pytest.mark.parametrize(("value", "failed"), [("1", 2), ("true", 2), ("0", 0), ("", 0), ("no", 0)])
def test_skips_fail_exactly_when_asked(pytester, monkeypatch, value, failed):
    monkeypatch.setenv("QWEN_ASSETS_NO_SKIPS", value)
    pytester.makepyfile(**SKIPPING)
    result = pytester.runpytest(
        "-p", "qwen_assets_tests.no_skips", "--continue-on-collection-errors"
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) == failed, result.stdout.str()
    assert outcomes.get("passed") == 1
    if failed:
        assert "skipped where QWEN_ASSETS_NO_SKIPS is set: " in result.stdout.str()
