"""The keel_provision plugin: how this component hooks into Keel (see keel_core.hookspecs).

It implements no hooks yet; the component's issue fills it in.
"""
