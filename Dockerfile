# Image that installs sriov-passthrough-cni on a node and runs its node agent
# (see deploy/).
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t sriov-passthrough-cni .
# The final stage is busybox because install-plugin is a POSIX sh script; it needs
# sh, cmp, dd, mktemp, mv, stat, sync and timeout, all of which busybox has.

ARG GO_IMAGE=golang:1.26
ARG BASE_IMAGE=busybox:1.37

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd/ cmd/
COPY pkg/ pkg/
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/sriov-passthrough-cni ./cmd/sriov-passthrough-cni
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/sriov-passthrough-agent ./cmd/sriov-passthrough-agent
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
        -o /out/sriov-passthrough-dra ./cmd/sriov-passthrough-dra

FROM ${BASE_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="sriov-passthrough-cni" \
      org.opencontainers.image.source="https://github.com/kubevirt/sriov-passthrough-cni" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/sriov-passthrough-cni /plugin-src/sriov-passthrough-cni
COPY plugin/90-sriov-passthrough-cni.conf /plugin-src/90-sriov-passthrough-cni.conf
COPY install-plugin /usr/local/bin/install-plugin
COPY --from=build /out/sriov-passthrough-agent /usr/local/bin/sriov-passthrough-agent
# The agent execs it on a node whose node.json says allocation dra.
COPY --from=build /out/sriov-passthrough-dra /usr/local/bin/sriov-passthrough-dra
ENTRYPOINT ["/usr/local/bin/install-plugin"]
CMD ["/host/opt/cni/bin"]
