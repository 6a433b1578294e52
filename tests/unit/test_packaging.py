"""The lab (namespaces, etcd processes, the demo) is test and demo tooling: the agent, the CNI
plugin and the other node commands never import it."""

import subprocess
import sys

PRODUCTION = ["vxnet.cli", "vxnet.agent.startup", "vxnet.agent.runtime", "vxnet.agent.http",
              "vxnet.cni.plugin", "vxnet.cleanup", "vxnet.status", "vxnet.dockeropts"]


def test_the_agent_and_the_cni_plugin_do_not_import_the_lab():
    code = (f"import sys; import {', '.join(PRODUCTION)}; "
            "print(sorted(m for m in sys.modules if m.startswith('vxnet.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
