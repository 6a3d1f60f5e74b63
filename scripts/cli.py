"""What the command-line scripts share: flag checks that make bad input one clear line."""

from absl import flags


def _known_model(name: str | None) -> bool:
    import zoo

    if name is not None:
        try:
            zoo.spec(name)
        except ValueError as e:  # its message lists the close matches
            raise flags.ValidationError(str(e)) from None
    return True


def check_model_flag(name: str = "model") -> None:
    """Validate flag ``name`` as a registered model (unset passes: mark it required)."""
    flags.register_validator(name, _known_model)
