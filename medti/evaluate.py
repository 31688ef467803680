"""Placeholder: `medti evaluate` is being built (see the open issues)."""


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="(not built yet)")
    p.set_defaults(func=_todo)


def _todo(args) -> int:
    from medti.errors import MedtiError

    raise MedtiError("'medti evaluate' is not built yet")
