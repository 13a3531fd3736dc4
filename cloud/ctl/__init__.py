"""The operator CLI ``autoglm ctl`` over the MQTT control plane (no torch).

Entry point: ``cloud.ctl.cli.register``.
"""
