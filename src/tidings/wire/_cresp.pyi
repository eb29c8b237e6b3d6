def parse(
    buf: bytearray | bytes,
    pos: int,
    max_args: int,
    max_bulk: int,
    max_inline: int,
    max_query: int,
    /,
) -> tuple[list[bytes], int] | None: ...
def untrack(obj: object, /) -> None: ...
