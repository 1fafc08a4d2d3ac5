"""k8s/'s overlays as `kubectl kustomize` renders them, for the tests that
run the rendered scripts and configs as real processes."""
import os
import subprocess

import yaml

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class Render:
    def __init__(self, overlay):
        out = subprocess.run(["kubectl", "kustomize", os.path.join(REPO, "k8s", "overlays", overlay)],
                             capture_output=True, text=True, check=True).stdout
        self.objs = [o for o in yaml.safe_load_all(out) if o]

    def get(self, kind, name):
        return next(o for o in self.objs if o["kind"] == kind and o["metadata"]["name"] == name)

    def sts_spec(self, name):
        """A StatefulSet's pod spec."""
        return self.get("StatefulSet", name)["spec"]["template"]["spec"]

    def volume_configmap(self, pod_spec, volume):
        """The ConfigMap a pod mounts as `volume` (its hashed name resolved)."""
        cm = next(v["configMap"]["name"] for v in pod_spec["volumes"] if v["name"] == volume)
        return self.get("ConfigMap", cm)

    def chatd_config(self):
        """chatd-config's data (the name carries kustomize's hash)."""
        return next(o for o in self.objs if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("chatd-config"))["data"]
