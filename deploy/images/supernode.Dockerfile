# The supernode image: the binary, the shared libraries it links (Debian's librocksdb with its
# compression libraries, libstdc++, glibc and the dynamic loader) and the CA certificates bundle,
# nothing else: no shell, no package manager.
#
# Built FROM scratch by scripts/build-images.sh, which assembles rootfs.tar from `ldd` of the
# binary (no base image is pulled). It runs as the unprivileged user 65532 ("damselfly"): the
# supernode binds ports above 1024 and writes only its data dir.
FROM scratch
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="damselfly-supernode" \
      org.opencontainers.image.description="Damselfly supernode: regional seed and piece scheduler" \
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
# HTTP (REST API, /healthz, /metrics) and QUIC (peers).
EXPOSE 8001/tcp 8002/udp
ENTRYPOINT ["/usr/local/bin/supernode"]
CMD ["--quic-listen", "0.0.0.0:8002", "--http-listen", "0.0.0.0:8001", "--data-dir", "/var/lib/damselfly/supernode"]
