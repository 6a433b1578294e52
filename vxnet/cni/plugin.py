"""`vxnet-cni`: a CNI 1.0.0 plugin in the manner of flannel's. It reads subnet.env and delegates
to the standard `bridge` plugin (bridge cni0, gateway, hairpin, MTU) with `host-local` IPAM over
this node's subnet and a route to the cluster network.

Runtime contract: CNI_* environment, network config on stdin, result JSON on stdout, and on
failure an error JSON on stdout with a non-zero exit. The delegate config of every ADD is saved,
so DEL and CHECK act on exactly what ADD did, even if subnet.env changed since.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from vxnet.cni.netconf import bridge_config
from vxnet.errors import SubnetEnvError
from vxnet.store.subnetenv import SubnetEnv

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/vxnet"

# CNI error codes (spec section "Error")
E_VERSION, E_ENV, E_DECODE, E_CONFIG, E_TRY_LATER = 1, 4, 6, 7, 11
E_DELEGATE = 100  # plugin-specific: the delegate failed


class NetConf(TypedDict):
    """The network config on stdin, as parse_config() checked it: the keys vxnet-cni reads (a
    runtime may send others; they are kept but not read)."""

    cniVersion: str
    name: str
    type: str
    subnetFile: NotRequired[str]
    dataDir: NotRequired[str]
    delegate: NotRequired[dict[str, Any]]  # overrides of the bridge plugin's config
    prevResult: NotRequired[Any]  # CHECK: the ADD's result, handed on as it came


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def _env(name: str, required: bool = True) -> str:
    value = os.environ.get(name, "")
    if required and not value:
        raise CniError(E_ENV, f"{name} is not set", "the runtime must set it for this command")
    return value


def parse_config(raw: bytes) -> NetConf:
    try:
        conf = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(E_DECODE, "network config on stdin is not JSON", str(e)) from None
    if not isinstance(conf, dict):
        raise CniError(E_DECODE, "network config on stdin is not a JSON object")
    for key in ("cniVersion", "name", "type"):
        if not isinstance(conf.get(key), str) or not conf[key]:
            raise CniError(E_CONFIG, f"network config: {key!r} must be a non-empty string")
    if conf["cniVersion"] not in SUPPORTED:
        raise CniError(E_VERSION, f"cniVersion {conf['cniVersion']} is not supported",
                       f"supported: {', '.join(SUPPORTED)}")
    for key in ("subnetFile", "dataDir"):
        if key in conf and not isinstance(conf[key], str):
            raise CniError(E_CONFIG, f"network config: {key!r} must be a string")
    if not isinstance(conf.get("delegate", {}), dict):
        raise CniError(E_CONFIG, "network config: 'delegate' must be an object")
    return cast(NetConf, conf)  # json.loads' dict, now checked key by key


def delegate_config(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """What flannel's plugin hands the bridge plugin, built from subnet.env (and the network
    config's own `delegate` overrides)."""
    delegate = bridge_config(env, conf["name"], conf["cniVersion"], conf.get("dataDir"))
    delegate.update(conf.get("delegate", {}))
    return delegate


def _find(plugin: str) -> str:
    for d in _env("CNI_PATH").split(":"):
        path = Path(d) / plugin
        if d and path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise CniError(E_CONFIG, f"delegate plugin {plugin!r} not found in CNI_PATH",
                   os.environ.get("CNI_PATH", ""))


def _delegate(command: str, conf: dict[str, Any]) -> bytes:
    res = subprocess.run([_find(conf["type"])], input=json.dumps(conf).encode(),
                         capture_output=True, env={**os.environ, "CNI_COMMAND": command},
                         timeout=60)
    if res.returncode != 0:
        try:
            err = json.loads(res.stdout)
            msg, details = err.get("msg", ""), err.get("details", "")
        except ValueError:
            msg, details = res.stdout.decode(errors="replace"), ""
        raise CniError(E_DELEGATE, f"delegate {conf['type']} {command} failed: {msg}",
                       details or res.stderr.decode(errors="replace").strip())
    return res.stdout


def _state_path(conf: NetConf) -> Path:
    cid, ifname = _env("CNI_CONTAINERID"), _env("CNI_IFNAME")
    if "/" in cid or cid.startswith("."):
        raise CniError(E_ENV, f"CNI_CONTAINERID {cid!r} is not a valid container ID")
    return Path(conf.get("dataDir") or DEFAULT_DATA_DIR) / f"{cid}-{ifname}.json"


def cmd_add(conf: NetConf) -> bytes:
    _env("CNI_NETNS")
    subnet_file = conf.get("subnetFile", DEFAULT_SUBNET_FILE)
    try:
        env = SubnetEnv.read(subnet_file)
    except SubnetEnvError as e:
        raise CniError(E_TRY_LATER, "no usable subnet.env: is the vxnet agent running?",
                       str(e)) from None
    delegate = delegate_config(conf, env)
    state = _state_path(conf)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(delegate))
    try:
        return _delegate("ADD", delegate)
    except CniError:
        with contextlib.suppress(CniError):  # leave no half-made pod: undo what the delegate did
            _delegate("DEL", delegate)
        state.unlink(missing_ok=True)
        raise


def cmd_del(conf: NetConf) -> bytes:
    state = _state_path(conf)
    try:
        delegate = json.loads(state.read_text())
    except FileNotFoundError:
        return b""  # DEL is idempotent: nothing was added, or it is gone already
    except ValueError:
        raise CniError(E_DECODE, f"saved delegate config {state} is corrupt") from None
    _delegate("DEL", delegate)
    state.unlink(missing_ok=True)
    return b""


def cmd_check(conf: NetConf) -> bytes:
    _env("CNI_NETNS")
    state = _state_path(conf)
    try:
        delegate = json.loads(state.read_text())
    except FileNotFoundError:
        raise CniError(E_CONFIG, f"no ADD recorded for this container ({state})") from None
    if "prevResult" in conf:
        delegate["prevResult"] = conf["prevResult"]
    return _delegate("CHECK", delegate)


def run(command: str, stdin: bytes) -> bytes:
    if command == "VERSION":
        return json.dumps({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED}).encode()
    handlers = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check}
    if command not in handlers:
        raise CniError(E_ENV, f"CNI_COMMAND {command!r} is not one of ADD, DEL, CHECK, VERSION")
    return handlers[command](parse_config(stdin))


def main() -> None:
    command = os.environ.get("CNI_COMMAND", "")
    stdin = sys.stdin.buffer.read() if command != "VERSION" else b""
    try:
        sys.stdout.buffer.write(run(command, stdin))
    except CniError as e:
        version = "1.0.0"
        with contextlib.suppress(ValueError, AttributeError):  # answer in the caller's version
            version = json.loads(stdin).get("cniVersion", version)
        json.dump({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details},
                  sys.stdout)
        sys.exit(1)
    except Exception as e:  # never a traceback to the runtime: an error it can show
        json.dump({"cniVersion": "1.0.0", "code": 999, "msg": f"internal error: {e!r}"},
                  sys.stdout)
        sys.exit(1)


if __name__ == "__main__":
    main()
