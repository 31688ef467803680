"""Placeholder: `medti train-embedding` is being built (see the open issues)."""


def add_parser(sub) -> None:
    p = sub.add_parser("train-embedding", help="(not built yet)")
    p.set_defaults(func=_todo)


def _todo(args) -> int:
    from medti.errors import MedtiError

    raise MedtiError("'medti train-embedding' is not built yet")
