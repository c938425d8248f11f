# tollgate's image: the static binary and nothing else it does not need.
#
# Build it with `make image`: that runs `make build` on the host (CGO_ENABLED=0, so nothing
# links libc) and stages bin/image/ (the host's CA bundle, a passwd entry for the numeric
# user, an empty /data). FROM scratch pulls nothing, so the image builds offline.
#
# No shell, no package manager, no curl: a compose healthcheck cannot run inside it. Probe
# /readyz and /healthz from outside (the load balancer, the kubelet). See deploy/README.md.
FROM scratch

# tollgate calls the providers over https; scratch has no CA bundle of its own. Go's
# crypto/x509 finds it at this path.
COPY bin/image/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# Only so that tools that resolve the uid show a name; tollgate itself never looks it up.
COPY bin/image/passwd /etc/passwd
COPY bin/image/group /etc/group
# Owned by root: the process cannot rewrite its own binary.
COPY bin/tollgate /usr/local/bin/tollgate
# The one writable place: the SQLite file and generated master key of a single instance,
# and the usage spool, which every replica needs for itself.
COPY --chown=65532:65532 bin/image/data /data

USER 65532:65532
WORKDIR /data

# The proxy must listen beyond the container's own loopback, or nothing reaches it. The
# admin listener (/admin/v1, /metrics) stays on the default 127.0.0.1:8788, the container's
# own loopback, so it is unreachable until the operator sets TOLLGATE_ADMIN_ADDR=:8788 on a
# private network; the manifests in deploy/ do, with TOLLGATE_METRICS_TOKEN_FILE.
ENV TOLLGATE_ADDR=:8787 \
    TOLLGATE_DB=/data/tollgate.db \
    TOLLGATE_SPOOL=/data/spool

VOLUME ["/data"]
# 8787: inference, /healthz, /readyz. 8788: admin API, /metrics, /healthz, /readyz.
EXPOSE 8787 8788

ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
