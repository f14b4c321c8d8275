"""The ``ner`` commands, one module each: its ``add_parser(subparsers)`` and the function(s) it runs.

:mod:`app.cli` assembles them (its ``COMMANDS`` is the order ``ner --help`` lists them in). What they
share is :mod:`app.commands.shared`; the model and training flags of train / pipeline / demo are
:mod:`app.commands.config_options`; the flags of both come from :mod:`app.flags`.
"""
