"""Buildkite pipeline secrets in the JuliaGPU format: our encrypt and decrypt-env, OpenSSL's
commands as JuliaGPU's tools/encrypt and environment hook run them, and the repository binding."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

import slurm_sync.connectors.buildkite.secrets as bks
from slurm_sync.connectors.buildkite.secrets import (
    BuildkiteSecretError,
    DecryptedSecret,
    cli_decrypt_env,
    cli_encrypt,
    decrypt,
    decrypt_env,
    encrypt,
    normalize_repository,
    read_private_key,
)

SENTINEL = "s3ntinel-Zq8x-DO-NOT-LEAK"
REPO = "git@github.com:JuliaGPU/CUDA.jl.git"
OTHER_REPO = "https://github.com/attacker/evil.git"

OPENSSL = shutil.which("openssl")
BASH = shutil.which("bash")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None or BASH is None, reason="needs the openssl binary and bash"
)

# Tricky values: quotes, blanks, newlines, $, backquotes, globs, options, non-ASCII.
TRICKY_VALUES = [
    "plain-t0ken",
    "it's",
    'say "hi"',
    "two  spaces and a\ttab",
    "$HOME ${PATH} $(id) `id` \\$ \\",
    "line one\nline two",
    "ends in a newline\n",
    "*",
    "-n",
    "ünïcödé €",
    "';exit 1;'",
]


@dataclass(frozen=True)
class Keys:
    private_pem: bytes
    public_pem: bytes
    private_path: Path
    public_path: Path


def _pem_pair(bits: int = 2048) -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # what `openssl genrsa` writes
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    private_pem, public_pem = _pem_pair()
    where = tmp_path_factory.mktemp("keys")
    private_path, public_path = where / "secrets.private.key", where / "secrets.public.key"
    private_path.write_bytes(private_pem)
    private_path.chmod(0o600)
    public_path.write_bytes(public_pem)
    return Keys(private_pem, public_pem, private_path, public_path)


@pytest.fixture(scope="module")
def other_keys() -> Keys:
    private_pem, public_pem = _pem_pair()
    return Keys(private_pem, public_pem, Path("/nonexistent"), Path("/nonexistent"))


def _quoted(snippet: str) -> str:
    """The text between the quotes of ``SECRET_X: "..."``."""
    return snippet.split('"')[1]


def _env(**secrets: str) -> dict[str, str]:
    """A trusted (non-PR) build of REPO with these SECRET_ variables (quoted texts)."""
    env = {
        "BUILDKITE_PULL_REQUEST": "false",
        "BUILDKITE_PULL_REQUEST_REPO": "",
        "BUILDKITE_REPO": REPO,
        "PATH": "/usr/bin:/bin",
    }
    env.update({f"SECRET_{name}": text for name, text in secrets.items()})
    return env


def _fixed_rand(count: int) -> bytes:
    """A deterministic random source: bytes 0, 1, 2, ... (keyfile), then the same (salt)."""
    return bytes(i % 256 for i in range(count))


def _rsa_cli() -> str:
    """``rsautl`` as JuliaGPU's scripts use it; ``pkeyutl`` (same PKCS#1 v1.5 default) when this
    OpenSSL no longer has rsautl."""
    assert OPENSSL is not None
    done = subprocess.run([OPENSSL, "rsautl", "-help"], capture_output=True, check=False)
    return "rsautl" if done.returncode == 0 else "pkeyutl"


# JuliaGPU/buildkite image/hooks/environment, for one secret: the key file and the printing of
# the value are the only changes.
JULIAGPU_HOOK = r"""
set -euo pipefail
secret=$1
encrypted_key=$(echo "$secret" | cut -d ';' -f 1)
keyfile=$(mktemp)
echo "$encrypted_key" |
    openssl base64 -d -A |
    openssl $RSA -decrypt -inkey "$PRIVATE_KEY" -out "$keyfile" 2>/dev/null
encrypted_value=$(echo "$secret" | cut -d ';' -f 2)
value=$(echo "$encrypted_value" |
        openssl base64 -d -A |
        openssl enc -d -aes-256-cbc -pbkdf2 -iter 100000 -pass "file:$keyfile")
rm -f "$keyfile"
printf '%s' "$value"
"""

# JuliaGPU/buildkite tools/encrypt, with the name and value as arguments instead of prompts.
JULIAGPU_ENCRYPT = r"""
set -euo pipefail
var=$1
val=$2
keyfile=$(mktemp)
openssl rand -base64 128 > $keyfile
encrypted_key=$(openssl $RSA -encrypt -pubin -inkey "$PUBLIC_KEY" -in $keyfile 2>/dev/null |
                openssl base64 |
                tr -d '\n')
encrypted=$(echo $val |
            openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 -pass file:$keyfile |
            openssl base64 |
            tr -d '\n')
rm -f $keyfile
echo "SECRET_$var: \"$encrypted_key;$encrypted\""
"""


def _bash(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    assert BASH is not None
    return subprocess.run(
        [BASH, "-c", script, "bash", *args], capture_output=True, check=False, env=env
    )


# -- the format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", TRICKY_VALUES)
def test_round_trip(keys: Keys, value: str) -> None:
    """What encrypt makes, decrypt opens: the same value, the name, no repository."""
    snippet = encrypt("MY_TOKEN", value, keys.public_pem)
    opened = decrypt(snippet, keys.private_pem)
    assert opened == DecryptedSecret(name="MY_TOKEN", value=value, repository=None)
    assert decrypt(_quoted(snippet), keys.private_pem).name is None


def test_snippet_shape(keys: Keys) -> None:
    """One line, ``SECRET_<NAME>: "<b64 RSA-2048 block>;<b64 Salted__ + salt + AES blocks>"``."""
    snippet = encrypt("CODECOV_TOKEN", SENTINEL, keys.public_pem)
    assert "\n" not in snippet
    assert snippet.startswith('SECRET_CODECOV_TOKEN: "') and snippet.endswith('"')
    key_part, value_part = _quoted(snippet).split(";")
    assert len(base64.b64decode(key_part, validate=True)) == 256
    blob = base64.b64decode(value_part, validate=True)
    assert blob.startswith(b"Salted__") and (len(blob) - 16) % 16 == 0 and len(blob) > 16
    assert SENTINEL not in snippet


def test_keyfile_is_openssl_rand_base64_128(keys: Keys) -> None:
    """The RSA part holds 128 bytes in base64, 64 columns, newline-terminated (175 bytes)."""
    snippet = encrypt("X", "v", keys.public_pem, rand=_fixed_rand)
    private = serialization.load_pem_private_key(keys.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    keyfile = private.decrypt(
        base64.b64decode(_quoted(snippet).split(";")[0]), padding.PKCS1v15()
    )
    encoded = base64.b64encode(_fixed_rand(128))
    assert keyfile == encoded[:64] + b"\n" + encoded[64:128] + b"\n" + encoded[128:] + b"\n"
    assert [len(line) for line in keyfile.split(b"\n")] == [64, 64, 44, 0]
    if OPENSSL is not None:  # the same text as OpenSSL's own base64 wrapping
        done = subprocess.run(
            [OPENSSL, "base64"], input=_fixed_rand(128), capture_output=True, check=True
        )
        assert keyfile == done.stdout


@needs_openssl
def test_value_part_matches_openssl_enc_byte_for_byte(keys: Keys) -> None:
    """With the same passphrase (first keyfile line) and salt, `openssl enc -pbkdf2 -iter
    100000` gives the very ciphertext of part 2."""
    assert OPENSSL is not None
    snippet = encrypt("X", "some value", keys.public_pem, rand=_fixed_rand)
    blob = base64.b64decode(_quoted(snippet).split(";")[1])
    salt = _fixed_rand(8)
    assert blob[:16] == b"Salted__" + salt
    passphrase = base64.b64encode(_fixed_rand(128))[:64].decode()
    done = subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-pbkdf2", "-iter", "100000", "-S", salt.hex(),
         "-pass", f"pass:{passphrase}"],
        input=b"some value\n", capture_output=True, check=True,
    )
    body = done.stdout[16:] if done.stdout.startswith(b"Salted__") else done.stdout
    assert blob[16:] == body


# -- interoperability with JuliaGPU's OpenSSL commands ----------------------------------------


@needs_openssl
@pytest.mark.parametrize("repository", [None, REPO])
@pytest.mark.parametrize(
    "value", [v for v in TRICKY_VALUES if not v.endswith("\n")]  # $(...) drops final newlines
)
def test_juliagpu_hook_decrypts_ours(keys: Keys, value: str, repository: str | None) -> None:
    """JuliaGPU's environment hook (rsautl + enc -pbkdf2, cut -d ';' -f 1/2) decrypts our
    snippets, bound ones too: it ignores the third part."""
    snippet = encrypt("TOKEN", value, keys.public_pem, repository=repository)
    assert (";repo=" in snippet) == (repository is not None)
    env = {"PATH": os.environ["PATH"], "RSA": _rsa_cli(), "PRIVATE_KEY": str(keys.private_path)}
    done = _bash(JULIAGPU_HOOK, _quoted(snippet), env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode("utf-8") == value


@needs_openssl
@pytest.mark.parametrize("value", ["plain-t0ken", "one space", "it's:$dollar", "ünï €"])
def test_we_decrypt_juliagpu_tools_encrypt(keys: Keys, value: str) -> None:
    """A snippet made by JuliaGPU's tools/encrypt (openssl rand, rsautl, enc -pbkdf2) is opened
    by decrypt and exported by decrypt_env."""
    env = {"PATH": os.environ["PATH"], "RSA": _rsa_cli(), "PUBLIC_KEY": str(keys.public_path)}
    done = _bash(JULIAGPU_ENCRYPT, "THEIR_TOKEN", value, env=env)
    assert done.returncode == 0, done.stderr.decode()
    snippet = done.stdout.decode().strip()
    assert snippet.startswith('SECRET_THEIR_TOKEN: "')
    assert decrypt(snippet, keys.private_pem) == DecryptedSecret("THEIR_TOKEN", value, None)
    exports, warnings = decrypt_env(_env(THEIR_TOKEN=_quoted(snippet)), keys.private_pem)
    assert warnings == []
    assert _eval_exports(exports, ["THEIR_TOKEN"]) == {"THEIR_TOKEN": value}


@needs_openssl
def test_juliagpu_hook_decrypts_a_stripped_binding_but_we_refuse(keys: Keys) -> None:
    """Stripping ';repo=...' fools only the hook that does not know about bindings."""
    snippet = encrypt("TOKEN", SENTINEL, keys.public_pem, repository=REPO)
    stripped = ";".join(_quoted(snippet).split(";")[:2])
    env = {"PATH": os.environ["PATH"], "RSA": _rsa_cli(), "PRIVATE_KEY": str(keys.private_path)}
    assert _bash(JULIAGPU_HOOK, stripped, env=env).stdout.decode() == SENTINEL
    with pytest.raises(BuildkiteSecretError, match="missing"):
        decrypt(stripped, keys.private_pem)


# -- decrypt-env: which builds get secrets ----------------------------------------------------


def _eval_exports(exports: list[str], names: list[str], shell: str | None = None) -> dict[str, str]:
    """Run the export lines in a clean shell and read the variables back, NUL-separated."""
    shell = shell or BASH
    if shell is None:
        pytest.skip("needs bash")
    script = "\n".join(exports) + "\n" + "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    done = subprocess.run(
        [shell, "-c", script], capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"}
    )
    values = done.stdout.decode("utf-8").split("\0")[:-1]
    return dict(zip(names, values))


def test_non_pr_build_gets_exports(keys: Keys) -> None:
    """BUILDKITE_PULL_REQUEST=false: every secret is exported as NAME=value."""
    env = _env(
        A=_quoted(encrypt("A", "alpha", keys.public_pem)),
        B=_quoted(encrypt("B", "beta", keys.public_pem)),
    )
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert (exports, warnings) == (["export A=alpha", "export B=beta"], [])


@pytest.mark.parametrize(
    ("pr_repo", "repo"),
    [
        ("https://github.com/fork/CUDA.jl.git", REPO),
        ("git://github.com/someone/CUDA.jl.git", "https://github.com/JuliaGPU/CUDA.jl"),
        ("", REPO),
        ("", ""),
    ],
)
def test_fork_build_gets_nothing_and_touches_no_key(keys: Keys, pr_repo: str, repo: str) -> None:
    """A PR from a fork (or of unknown origin) gets no export; the private key is not even
    loaded (garbage given here), so fork builds cannot probe it."""
    env = _env(TOKEN=_quoted(encrypt("TOKEN", SENTINEL, keys.public_pem)))
    env.update(
        BUILDKITE_PULL_REQUEST="42", BUILDKITE_PULL_REQUEST_REPO=pr_repo, BUILDKITE_REPO=repo
    )
    exports, warnings = decrypt_env(env, b"not a key at all")
    assert exports == []
    assert len(warnings) == 1 and "SECRET_TOKEN" in warnings[0] and "42" in warnings[0]
    assert SENTINEL not in warnings[0]


def test_missing_pull_request_variable_gets_nothing(keys: Keys) -> None:
    """Without BUILDKITE_PULL_REQUEST the build is not known to be trusted: nothing."""
    env = _env(TOKEN=_quoted(encrypt("TOKEN", "v", keys.public_pem)))
    del env["BUILDKITE_PULL_REQUEST"]
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert exports == [] and "BUILDKITE_PULL_REQUEST is not set" in warnings[0]


@pytest.mark.parametrize(
    "pr_repo",
    [
        REPO,
        "https://github.com/JuliaGPU/CUDA.jl.git",
        "https://github.com/juliagpu/cuda.jl/",
        "git://github.com/JuliaGPU/CUDA.jl.git",
        "ssh://git@github.com/JuliaGPU/CUDA.jl",
    ],
)
def test_same_repository_pr_gets_exports(keys: Keys, pr_repo: str) -> None:
    """A PR from a branch of the same repository is trusted, whatever URL form each names."""
    env = _env(TOKEN=_quoted(encrypt("TOKEN", "v", keys.public_pem)))
    env.update(BUILDKITE_PULL_REQUEST="7", BUILDKITE_PULL_REQUEST_REPO=pr_repo)
    assert decrypt_env(env, keys.private_pem) == (["export TOKEN=v"], [])


def test_no_secrets_no_output(keys: Keys) -> None:
    """No SECRET_ variable: nothing to print, nothing to warn about, even for a fork build;
    names merely containing SECRET_ are not secrets."""
    env = _env()
    env["MY_SECRET_THING"] = "x"
    assert decrypt_env(env, keys.private_pem) == ([], [])
    env["BUILDKITE_PULL_REQUEST"] = "3"
    assert decrypt_env(env, keys.private_pem) == ([], [])


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("git@github.com:JuliaGPU/CUDA.jl.git", "github.com/juliagpu/cuda.jl"),
        ("https://github.com/JuliaGPU/CUDA.jl", "github.com/juliagpu/cuda.jl"),
        ("https://github.com/JuliaGPU/CUDA.jl.git/", "github.com/juliagpu/cuda.jl"),
        ("https://user:tok@github.com:443/JuliaGPU/CUDA.jl/", "github.com/juliagpu/cuda.jl"),
        ("ssh://git@github.com:22/JuliaGPU/CUDA.jl.git", "github.com/juliagpu/cuda.jl"),
        ("git://github.com/JuliaGPU/CUDA.jl.git", "github.com/juliagpu/cuda.jl"),
        ("  gitlab.example.org:group/sub/proj.git\n", "gitlab.example.org/group/sub/proj"),
        ("/srv/git/repo.git", "srv/git/repo"),
        ("", ""),
    ],
)
def test_normalize_repository(url: str, normalized: str) -> None:
    """Host and path, lowercase, without user, port, final / and .git."""
    assert normalize_repository(url) == normalized


def test_different_repositories_stay_different() -> None:
    """Normalizing does not merge distinct repositories."""
    assert normalize_repository("https://github.com/org/repo") != normalize_repository(
        "https://github.com/org/repo2"
    )
    assert normalize_repository("https://github.com/org/repo") != normalize_repository(
        "https://gitlab.com/org/repo"
    )


# -- repository binding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "build_repo",
    [REPO, "https://github.com/JuliaGPU/CUDA.jl", "https://github.com/juliagpu/cuda.jl.git/"],
)
def test_bound_secret_exported_for_its_repository(keys: Keys, build_repo: str) -> None:
    """A secret bound to a repository is exported in builds of that repository."""
    snippet = encrypt("TOKEN", "v", keys.public_pem, repository="https://github.com/JuliaGPU/CUDA.jl")
    assert _quoted(snippet).endswith(";repo=github.com/juliagpu/cuda.jl")
    assert decrypt(snippet, keys.private_pem).repository == "github.com/juliagpu/cuda.jl"
    env = _env(TOKEN=_quoted(snippet))
    env["BUILDKITE_REPO"] = build_repo
    assert decrypt_env(env, keys.private_pem) == (["export TOKEN=v"], [])


@pytest.mark.parametrize("build_repo", [OTHER_REPO, "https://github.com/JuliaGPU/CUDA.jl2", ""])
def test_bound_secret_refused_elsewhere(keys: Keys, build_repo: str) -> None:
    """In a build of another repository (or of none known) a bound secret is not exported;
    an unbound one next to it still is."""
    env = _env(
        TOKEN=_quoted(encrypt("TOKEN", SENTINEL, keys.public_pem, repository=REPO)),
        FREE=_quoted(encrypt("FREE", "free", keys.public_pem)),
    )
    env["BUILDKITE_REPO"] = build_repo
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert exports == ["export FREE=free"]
    assert len(warnings) == 1 and warnings[0].startswith("SECRET_TOKEN: ")
    assert "bound to github.com/juliagpu/cuda.jl" in warnings[0]
    assert SENTINEL not in warnings[0]


def test_binding_checked_before_the_value_is_decrypted(keys: Keys) -> None:
    """In another repository's build the value part is never opened: a broken value part
    gives the binding refusal, not a decryption error (no padding oracle there)."""
    key_part, value_part, repo_part = _quoted(
        encrypt("TOKEN", SENTINEL, keys.public_pem, repository=REPO)
    ).split(";")
    broken = ";".join([key_part, value_part[:-8] + "AAAAAAA=", repo_part])
    env = _env(TOKEN=broken)
    env["BUILDKITE_REPO"] = OTHER_REPO
    _, warnings = decrypt_env(env, keys.private_pem)
    assert "bound to" in warnings[0]
    env["BUILDKITE_REPO"] = REPO
    _, warnings = decrypt_env(env, keys.private_pem)
    assert "value part cannot be decrypted" in warnings[0]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda parts: parts[:2], "missing"),
        (lambda parts: [*parts[:2], "repo=github.com/attacker/evil"], "not the repository"),
        (lambda parts: [*parts[:2], "repo=" + normalize_repository(OTHER_REPO)], "not the repo"),
        (lambda parts: [*parts[:2], "github.com/juliagpu/cuda.jl"], "third part"),
        (lambda parts: [*parts, "repo=x"], "part(s)"),
    ],
)
def test_tampered_binding_refused(
    keys: Keys, tamper: Callable[[list[str]], list[str]], message: str
) -> None:
    """Stripping, editing or garbling the repository part makes the secret refused, both by
    decrypt and by decrypt_env in a build whose BUILDKITE_REPO matches the forged part."""
    parts = _quoted(encrypt("TOKEN", SENTINEL, keys.public_pem, repository=REPO)).split(";")
    forged = ";".join(tamper(parts))
    with pytest.raises(BuildkiteSecretError, match=re.escape(message)):
        decrypt(forged, keys.private_pem)
    env = _env(TOKEN=forged)
    env["BUILDKITE_REPO"] = OTHER_REPO
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert exports == [] and len(warnings) == 1 and SENTINEL not in warnings[0]


def test_binding_added_to_unbound_secret_refused(keys: Keys) -> None:
    """A repository part the key part does not vouch for is refused too."""
    forged = _quoted(encrypt("TOKEN", SENTINEL, keys.public_pem)) + ";repo=github.com/a/b"
    with pytest.raises(BuildkiteSecretError, match="added"):
        decrypt(forged, keys.private_pem)


def test_rewrapped_key_part_gives_no_value(keys: Keys) -> None:
    """Replacing the key part by a fresh unbound one (anyone can encrypt to the public key)
    does not open the value: without the passphrase part 2 decrypts to nothing or noise."""
    snippet = encrypt("TOKEN", SENTINEL, keys.public_pem, repository=REPO, rand=_fixed_rand)
    value_part = _quoted(snippet).split(";")[1]
    public = serialization.load_pem_public_key(keys.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    for attempt in range(20):
        keyfile = bks._keyfile_text(bytes([attempt]) * 128).encode()
        forged_key = base64.b64encode(public.encrypt(keyfile, padding.PKCS1v15())).decode()
        try:
            opened = decrypt(f"{forged_key};{value_part}", keys.private_pem)
        except BuildkiteSecretError:
            continue
        assert SENTINEL not in opened.value


def test_a_key_part_with_a_short_passphrase_is_refused(keys: Keys) -> None:
    """What a wrong private key can "decrypt" part 1 to under OpenSSL's implicit rejection (a
    few pseudo-random bytes, now and then base64 letters) is refused as a key part, never
    taken as a passphrase for part 2."""
    snippet = encrypt("TOKEN", SENTINEL, keys.public_pem, rand=_fixed_rand)
    value_part = _quoted(snippet).split(";")[1]
    public = serialization.load_pem_public_key(keys.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    for keyfile in (b"QUJD", b"Qk", b"A" * (bks.MIN_PASSPHRASE - 1) + b"\n"):
        key_part = base64.b64encode(public.encrypt(keyfile, padding.PKCS1v15())).decode()
        with pytest.raises(BuildkiteSecretError, match="the key part cannot be decrypted"):
            decrypt(f"{key_part};{value_part}", keys.private_pem)
    # the key file's first line alone (64 characters, all `-pass file:` reads) still opens it
    first_line = bks._keyfile_text(_fixed_rand(bks.KEYFILE_RANDOM_BYTES)).split("\n")[0]
    key_part = base64.b64encode(public.encrypt(first_line.encode() + b"\n",
                                               padding.PKCS1v15())).decode()
    assert decrypt(f"{key_part};{value_part}", keys.private_pem).value == SENTINEL


def test_require_repository_refuses_unbound(keys: Keys) -> None:
    """require_repository=True exports bound secrets only."""
    env = _env(
        FREE=_quoted(encrypt("FREE", "free", keys.public_pem)),
        BOUND=_quoted(encrypt("BOUND", "bound", keys.public_pem, repository=REPO)),
    )
    exports, warnings = decrypt_env(env, keys.private_pem, require_repository=True)
    assert exports == ["export BOUND=bound"]
    assert len(warnings) == 1 and warnings[0].startswith("SECRET_FREE: ")


# -- broken secrets ---------------------------------------------------------------------------


def _corruptions(keys: Keys, other_keys: Keys) -> dict[str, str]:
    good = _quoted(encrypt("X", SENTINEL, keys.public_pem))
    key_part, value_part = good.split(";")
    return {
        "ONE_PART": key_part,
        "NOT_BASE64": "!!!;" + value_part,
        "OTHER_KEY": _quoted(encrypt("X", SENTINEL, other_keys.public_pem)),
        "TRUNCATED_VALUE": key_part + ";" + value_part[:24],
        "FLIPPED_KEY": key_part[:10] + ("A" if key_part[10] != "A" else "B") + key_part[11:]
        + ";" + value_part,
        "EMPTY": "",
    }


def test_corrupted_secrets_warn_and_the_rest_go_on(keys: Keys, other_keys: Keys) -> None:
    """Each broken secret gives one warning naming its variable; good ones are exported."""
    broken = _corruptions(keys, other_keys)
    env = _env(GOOD=_quoted(encrypt("GOOD", "fine", keys.public_pem)), **broken)
    env["SECRET_bad-name"] = _quoted(encrypt("X", SENTINEL, keys.public_pem))
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert exports == ["export GOOD=fine"]
    warned = sorted(w.split(":")[0] for w in warnings)
    assert warned == sorted([f"SECRET_{n}" for n in broken] + ["SECRET_bad-name"])
    for warning in warnings:
        assert SENTINEL not in warning


def test_cli_decrypt_env_exit_codes(keys: Keys, other_keys: Keys) -> None:
    """1 when some secret was refused (the good ones still printed), 0 when all went well or
    a fork build was merely skipped."""
    good = _quoted(encrypt("GOOD", "fine", keys.public_pem))
    env = _env(GOOD=good, **_corruptions(keys, other_keys))
    out, err = io.StringIO(), io.StringIO()
    assert cli_decrypt_env(str(keys.private_path), env, out, err=err) == 1
    assert out.getvalue() == "export GOOD=fine\n"
    assert "warning: SECRET_OTHER_KEY" in err.getvalue() and SENTINEL not in err.getvalue()

    env = _env(GOOD=_quoted(encrypt("GOOD", "fine", keys.public_pem)))
    out, err = io.StringIO(), io.StringIO()
    assert cli_decrypt_env(str(keys.private_path), env, out, err=err) == 0
    assert (out.getvalue(), err.getvalue()) == ("export GOOD=fine\n", "")

    env.update(BUILDKITE_PULL_REQUEST="9", BUILDKITE_PULL_REQUEST_REPO=OTHER_REPO)
    out, err = io.StringIO(), io.StringIO()
    assert cli_decrypt_env(str(keys.private_path), env, out, err=err) == 0
    assert out.getvalue() == "" and "not decrypting 1 secret (SECRET_GOOD)" in err.getvalue()


# -- exports are safe shell -------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_exports_eval_to_the_exact_values(keys: Keys, shell: str) -> None:
    """Quotes, blanks, newlines, $ and backquotes survive eval in bash and in a POSIX sh."""
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"needs {shell}")
    names = [f"V{i}" for i in range(len(TRICKY_VALUES))]
    env = _env(
        **{n: _quoted(encrypt(n, v, keys.public_pem)) for n, v in zip(names, TRICKY_VALUES)}
    )
    exports, warnings = decrypt_env(env, keys.private_pem)
    assert warnings == []
    assert all(line.startswith("export V") for line in exports)
    assert _eval_exports(exports, names, path) == dict(zip(names, TRICKY_VALUES))


def test_lowercase_names_from_juliagpu_still_exported(keys: Keys) -> None:
    """decrypt_env accepts any shell name (JuliaGPU's tool does not check case)."""
    snippet = encrypt("X", "v", keys.public_pem)
    env = _env()
    env["SECRET_lower_case"] = _quoted(snippet)
    assert decrypt_env(env, keys.private_pem) == (["export lower_case=v"], [])


# -- input checks and leaks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("codecov_token", "v", "use CODECOV_TOKEN"),
        ("1ABC", "v", "uppercase letters"),
        ("A-B", "v", "uppercase letters"),
        ("", "v", "uppercase letters"),
        ("OK", "", "empty"),
        ("OK", SENTINEL + "\0tail", "NUL"),
    ],
)
def test_encrypt_refuses_bad_input(keys: Keys, name: str, value: str, message: str) -> None:
    """Names must be uppercase shell names, values non-empty and NUL-free; no message shows
    the value."""
    with pytest.raises(BuildkiteSecretError, match=message) as info:
        encrypt(name, value, keys.public_pem)
    assert SENTINEL not in _every_text(info.value)


def test_encrypt_refuses_unusable_keys(keys: Keys) -> None:
    """A private key given as the public one, a 1024-bit key, a non-RSA key, garbage."""
    with pytest.raises(BuildkiteSecretError, match="is a private key"):
        encrypt("X", "v", keys.private_pem)
    _, small = _pem_pair(1024)
    with pytest.raises(BuildkiteSecretError, match="1024 bits"):
        encrypt("X", "v", small)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(BuildkiteSecretError, match="not an RSA key"):
        encrypt("X", "v", ec_pem)
    with pytest.raises(BuildkiteSecretError, match="not a PEM public key"):
        encrypt("X", "v", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_encrypt_refuses_unbindable_repository(keys: Keys) -> None:
    """A repository that normalizes to nothing (or to characters a snippet cannot carry)."""
    for bad in ["", "   ", 'https://github.com/a/b"c']:
        with pytest.raises(BuildkiteSecretError, match="can bind a secret"):
            encrypt("X", "v", keys.public_pem, repository=bad)


def _every_text(exc: BaseException) -> str:
    """Every message and repr along an exception's cause and context chain."""
    texts = []
    current: BaseException | None = exc
    while current is not None:
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


def test_no_error_or_repr_contains_the_value_or_key_material(keys: Keys, other_keys: Keys) -> None:
    """Failures name the problem, never the value, the passphrase or the key text; a
    DecryptedSecret's repr leaves the value out; exceptions chain nothing."""
    secret = decrypt(encrypt("X", SENTINEL, keys.public_pem), keys.private_pem)
    assert SENTINEL not in repr(secret) and SENTINEL not in str(secret)
    snippet = encrypt("X", SENTINEL, keys.public_pem, rand=_fixed_rand)
    passphrase = base64.b64encode(_fixed_rand(128))[:64].decode()
    failures: list[Callable[[], object]] = [
        lambda: decrypt(snippet, other_keys.private_pem),
        lambda: decrypt(_quoted(snippet)[:-10], keys.private_pem),
        lambda: decrypt(snippet, keys.private_pem[:200] + b"garbage" + keys.private_pem[200:]),
        lambda: decrypt(snippet, keys.public_pem),
    ]
    key_body = keys.private_pem.decode().splitlines()[3]
    for failure in failures:
        with pytest.raises(BuildkiteSecretError) as info:
            failure()
        text = _every_text(info.value)
        assert SENTINEL not in text and passphrase not in text and key_body not in text
        # nothing chained: raised "from None" inside a handler, or outside one (a wrong key
        # can decrypt to ASCII garbage under OpenSSL's implicit rejection, ~1 key in 100)
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__


# -- the command-line shells ------------------------------------------------------------------


def test_cli_encrypt_prompts_and_prints_the_snippet(keys: Keys) -> None:
    """Name from the prompt, value from getpass (never argv, never echoed), the snippet alone
    on stdout, and it decrypts."""
    asked: list[str] = []

    def fake_input(prompt: str) -> str:
        asked.append(prompt)
        return "API_KEY\n"

    def fake_getpass(prompt: str) -> str:
        asked.append(prompt)
        return SENTINEL

    out, err = io.StringIO(), io.StringIO()
    code = cli_encrypt(
        str(keys.public_path), repository=REPO, input=fake_input, getpass=fake_getpass,
        out=out, err=err,
    )
    assert code == 0, err.getvalue()
    assert asked == ["Variable name: ", "Secret value: "]
    line = out.getvalue()
    assert line.startswith('SECRET_API_KEY: "') and line.endswith('"\n') and line.count("\n") == 1
    assert decrypt(line, keys.private_pem) == DecryptedSecret(
        "API_KEY", SENTINEL, normalize_repository(REPO)
    )
    assert SENTINEL not in line and SENTINEL not in err.getvalue()


def test_cli_encrypt_refusals(keys: Keys, tmp_path: Path) -> None:
    """2 with the reason on stderr: missing key file, bad name (before asking the value), a
    value with NUL (not shown), end of input."""

    def no_getpass(prompt: str) -> str:
        raise AssertionError("the value must not be asked for")

    def eof(prompt: str) -> str:
        raise EOFError

    err = io.StringIO()
    missing = str(tmp_path / "nope.pem")
    assert cli_encrypt(missing, name="X", value="v", err=err, out=io.StringIO()) == 2
    assert missing in err.getvalue()

    err = io.StringIO()
    assert cli_encrypt(
        str(keys.public_path), name="bad name", getpass=no_getpass, err=err, out=io.StringIO()
    ) == 2
    assert "'bad name'" in err.getvalue()

    err, out = io.StringIO(), io.StringIO()
    assert cli_encrypt(
        str(keys.public_path), name="X", value=SENTINEL + "\0", err=err, out=out
    ) == 2
    assert "NUL" in err.getvalue() and SENTINEL not in err.getvalue() and out.getvalue() == ""

    err = io.StringIO()
    assert cli_encrypt(str(keys.public_path), input=eof, err=err, out=io.StringIO()) == 2
    assert "no input" in err.getvalue()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_private_key_open_to_others_is_refused(keys: Keys, tmp_path: Path, mode: int) -> None:
    """A private key readable by group or others: exit 2, naming the file, its mode and the
    fix; nothing printed."""
    path = tmp_path / "key.pem"
    path.write_bytes(keys.private_pem)
    path.chmod(mode)
    env = _env(GOOD=_quoted(encrypt("GOOD", "fine", keys.public_pem)))
    out, err = io.StringIO(), io.StringIO()
    assert cli_decrypt_env(str(path), env, out, err=err) == 2
    assert out.getvalue() == ""
    assert f"{path} has mode {mode:04o}" in err.getvalue()
    assert f"chmod 600 {path}" in err.getvalue()
    path.chmod(0o400)
    out = io.StringIO()
    assert cli_decrypt_env(str(path), env, out, err=io.StringIO()) == 0
    assert out.getvalue() == "export GOOD=fine\n"


def test_private_key_file_problems(keys: Keys, tmp_path: Path) -> None:
    """Missing, a directory, not a key, passphrase-protected: exit 2 naming the file."""
    encrypted = tmp_path / "encrypted.pem"
    key = serialization.load_pem_private_key(keys.private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"hello")
    directory = tmp_path / "dir"
    directory.mkdir()
    cases = {
        tmp_path / "missing.pem": "does not exist",
        directory: "not a regular file",
        garbage: "not a PEM private key",
        encrypted: "passphrase",
    }
    for path, message in cases.items():
        if path.exists():
            path.chmod(0o700 if path.is_dir() else 0o600)
        err = io.StringIO()
        assert cli_decrypt_env(str(path), _env(), io.StringIO(), err=err) == 2, path
        assert f"private key file {path}" in err.getvalue() and message in err.getvalue()


def test_read_private_key_checks_mode(keys: Keys, tmp_path: Path) -> None:
    """read_private_key returns the PEM of a 0600 file and refuses a 0644 one."""
    path = tmp_path / "k.pem"
    path.write_bytes(keys.private_pem)
    path.chmod(0o600)
    assert read_private_key(str(path)) == keys.private_pem
    path.chmod(0o644)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(BuildkiteSecretError, match="run chmod 600"):
        read_private_key(str(path))
