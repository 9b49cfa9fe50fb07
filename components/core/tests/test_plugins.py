from __future__ import annotations

import pytest

from keel_core import plugins
from keel_core.errors import PluginError
from keel_core.types import HealthCheck

GOOD = """
from keel_core import hookimpl
from keel_core.types import HealthCheck

@hookimpl
def keel_health_checks():
    return [HealthCheck("good-check", "true")]
"""


def test_installed_plugins_are_loaded_with_their_hooks(entry_points):
    entry_points({"good": GOOD})
    pm = plugins.load(environ={})
    assert list(pm.infos) == ["good"]
    assert pm.infos["good"].hooks == ["keel_health_checks"]
    checks = plugins.collect(pm.hook.keel_health_checks())
    assert [c.name for c in checks] == ["good-check"]


def test_real_entry_points_include_keel_core_itself():
    pm = plugins.load(environ={})
    assert "core" in pm.infos
    assert pm.infos["core"].distribution == "keel-core"
    names = [c.name for c in plugins.collect(pm.hook.keel_health_checks())]
    assert "no-failed-units" in names


def test_disable_variable_removes_plugins(entry_points):
    entry_points({"good": GOOD, "other": GOOD})
    pm = plugins.load(environ={plugins.DISABLE_ENV: " good , nonexistent"})
    assert list(pm.infos) == ["other"]
    assert pm.disabled == ["good"]


def test_plugin_that_fails_to_import_is_named(entry_points):
    entry_points({"broken": "import no_such_module_anywhere\n"})
    with pytest.raises(
        PluginError, match=r"plugin 'broken': failed to load fakeplugin_broken"
    ) as err:
        plugins.load(environ={})
    assert "ModuleNotFoundError" in str(err.value)


def test_plugin_with_unknown_hook_is_named(entry_points):
    entry_points(
        {
            "typo": """
            from keel_core import hookimpl
            @hookimpl
            def keel_platfroms():
                return []
            """
        }
    )
    with pytest.raises(PluginError, match=r"'typo': implements unknown hook\(s\) keel_platfroms"):
        plugins.load(environ={})


def test_plugin_with_wrong_hook_arguments_is_named(entry_points):
    entry_points(
        {
            "badargs": """
            from keel_core import hookimpl
            @hookimpl
            def keel_image_contribution(image, extra):
                return None
            """
        }
    )
    with pytest.raises(PluginError, match=r"'badargs': invalid hook implementation"):
        plugins.load(environ={})


def test_exception_inside_a_hook_names_the_plugin(entry_points):
    entry_points(
        {
            "raiser": """
            from keel_core import hookimpl
            @hookimpl
            def keel_platforms():
                return {}["missing"]
            """
        }
    )
    pm = plugins.load(environ={})
    with pytest.raises(PluginError, match=r"plugin 'raiser': keel_platforms raised KeyError"):
        pm.hook.keel_platforms()


def test_tracing_prints_calls_and_results(entry_points):
    entry_points({"good": GOOD})
    pm = plugins.load(environ={})
    lines: list[str] = []
    plugins.enable_tracing(pm, lines.append)
    pm.hook.keel_health_checks()
    assert lines[0].startswith("keel-trace: call keel_health_checks() -> [")
    assert "good" in lines[0]
    assert "good-check" in lines[1]


def test_trace_variable_enables_tracing(entry_points, capsys):
    entry_points({"good": GOOD})
    pm = plugins.load(environ={plugins.TRACE_ENV: "1"})
    pm.hook.keel_health_checks()
    assert "keel-trace: call keel_health_checks" in capsys.readouterr().err


def test_extra_plugins_register_like_installed_ones():
    from keel_core import hookimpl

    class Marked:
        @hookimpl
        def keel_health_checks(self):
            return [HealthCheck("extra", "true")]

    pm = plugins.load(extra=[("extra", Marked())], environ={})
    assert "extra" in pm.infos
    assert "extra" in [c.name for c in plugins.collect(pm.hook.keel_health_checks())]
