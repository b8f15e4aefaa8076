"""Docker HEALTHCHECK: exit 0 when GET /healthz on this container's port answers 200, else 1 (stdlib only).
With CXR_ROLE=listen (the DICOM node): exit 0 when its DICOM port ($CXR_DICOM_PORT, 11112) accepts a connection."""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request


def main() -> int:
    if os.environ.get("CXR_ROLE") == "listen":
        dicom_port = int(os.environ.get("CXR_DICOM_PORT", "11112"))
        try:
            socket.create_connection(("127.0.0.1", dicom_port), timeout=4).close()
            return 0
        except OSError as e:
            sys.stderr.write(f"unhealthy: DICOM port {dicom_port}: {e}\n")
            return 1
    port = os.environ.get("CXR_PORT", "8000")
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:  # noqa: S310 (fixed loopback URL)
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        sys.stderr.write(f"unhealthy: {url}: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
