"""`cxr demo`: the whole study end to end (data -> train -> export -> stack/fuse -> evaluate -> scan -> bench)."""
