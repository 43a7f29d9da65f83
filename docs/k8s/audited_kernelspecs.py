# docs/k8s/audited_kernelspecs.py
"""A KernelSpecManager that finds kernelspecs only in the admin's directories and
refuses to start any name outside allowed_kernelspecs (the stock one only hides them
from the list)."""
import os

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

# The directories that hold the audited kernelspecs, and nothing a user can write.
ADMIN_KERNEL_DIRS = os.environ.get(
    "JUPYTER_AUDIT_KERNEL_DIRS", "/usr/local/share/jupyter/kernels"
).split(os.pathsep)


class AuditedKernelSpecManager(KernelSpecManager):
    def _kernel_dirs_default(self):
        return list(ADMIN_KERNEL_DIRS)

    def get_kernel_spec(self, kernel_name):
        if self.allowed_kernelspecs and kernel_name.lower() not in self.allowed_kernelspecs:
            raise NoSuchKernel(kernel_name)
        return super().get_kernel_spec(kernel_name)
