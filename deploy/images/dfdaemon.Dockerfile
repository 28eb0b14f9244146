# The dfdaemon image: the binary, the shared libraries it links (Debian's librocksdb with its
# compression libraries, libstdc++, glibc and the dynamic loader), the CA certificates bundle,
# and one static busybox for the node-setup init step.
#
# Built FROM scratch by scripts/build-images.sh, which assembles rootfs.tar from `ldd` of the
# binary (no base image is pulled).
#
# Users: the daemon itself runs as the unprivileged user 65532 ("damselfly"): it binds ports
# above 1024 and writes only its data dir. Only the node-setup step runs as root (Kubernetes
# runs it as an init container with `runAsUser: 0`): it writes the engine's mirror configuration
# into the host's /etc (containerd's certs.d, CRI-O's registries.conf.d) and hands the host data
# dir to user 65532. That step is the only user of /bin/busybox (`/bin/busybox sh SCRIPT`); the
# daemon never executes it.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="damselfly-dfdaemon" \
      org.opencontainers.image.description="Damselfly dfdaemon: per-host registry mirror and QUIC peer" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ADD rootfs.tar /
# Plain log lines (no colour escapes) for kubectl logs and log collectors.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt NO_COLOR=1
# A fixed glibc mmap threshold: buffers of 512 KiB and more (pieces, upload chunks) are mapped
# and returned on free instead of fragmenting the worker threads' arenas once glibc's dynamic
# threshold rose. Transfer bench, 4 GiB: supernode peak RSS 52 MiB against 126, uploading
# dfdaemon 42 against 49, downloading 48 against 53 (DESIGN.md, "Swarm speed").
ENV MALLOC_MMAP_THRESHOLD_=524288
USER 65532:65532
# HTTP (registry mirror, dfget API, /healthz, /metrics; bind it to 127.0.0.1) and QUIC (peers).
EXPOSE 65001/tcp 65002/udp
ENTRYPOINT ["/usr/local/bin/dfdaemon"]
