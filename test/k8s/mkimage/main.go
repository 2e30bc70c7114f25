// Command mkimage writes a one-layer OCI image archive (a tar of an OCI image
// layout) that `ctr images import` loads without a registry or a docker
// engine. The index names the image with the io.containerd.image.name
// annotation, which is the name the kubelet asks containerd for.
//
//	mkimage -name localhost/busybox:t -out busybox.tar \
//	    -file /usr/bin/busybox=bin/busybox:0755 -link bin/sh=busybox -cmd sh
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// entry is one file, directory or symlink of the layer.
type entry struct {
	name, target string
	data         []byte
	mode         int64
	kind         byte
}

func main() {
	var files, links, entrypoint, cmd, labels list
	name := flag.String("name", "", "image name, e.g. localhost/pause:v1")
	out := flag.String("out", "", "archive to write")
	flag.Var(&files, "file", "SRC=DST[:MODE] copies host file SRC to DST in the image (repeatable)")
	flag.Var(&links, "link", "DST=TARGET makes DST a symlink to TARGET (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable)")
	flag.Var(&cmd, "cmd", "cmd argument (repeatable)")
	flag.Var(&labels, "label", "KEY=VALUE image label (repeatable)")
	flag.Parse()
	if *name == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "mkimage: -name and -out are required")
		os.Exit(2)
	}
	entries, err := layerEntries(files, links)
	if err == nil {
		err = writeArchive(*out, *name, entries, entrypoint, cmd, labels)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func layerEntries(files, links list) ([]entry, error) {
	var entries []entry
	dirs := map[string]bool{}
	addDirs := func(p string) {
		for d := path.Dir(p); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			entries = append(entries, entry{name: d + "/", mode: 0o755, kind: tar.TypeDir})
		}
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("-file %q: want SRC=DST[:MODE]", f)
		}
		mode := int64(0o644)
		if d, m, ok := strings.Cut(dst, ":"); ok {
			v, err := strconv.ParseInt(m, 8, 32)
			if err != nil {
				return nil, fmt.Errorf("-file %q: mode: %w", f, err)
			}
			dst, mode = d, v
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		dst = strings.TrimPrefix(path.Clean(dst), "/")
		addDirs(dst)
		entries = append(entries, entry{name: dst, data: data, mode: mode, kind: tar.TypeReg})
	}
	for _, l := range links {
		dst, target, ok := strings.Cut(l, "=")
		if !ok {
			return nil, fmt.Errorf("-link %q: want DST=TARGET", l)
		}
		dst = strings.TrimPrefix(path.Clean(dst), "/")
		addDirs(dst)
		entries = append(entries, entry{name: dst, target: target, mode: 0o777, kind: tar.TypeSymlink})
	}
	// Parents before children, as an unpacker expects.
	slices.SortStableFunc(entries, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	return entries, nil
}

// layerTar is the uncompressed layer; its digest is also the config's diff_id.
func layerTar(entries []entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.target, Mode: e.mode, Typeflag: e.kind,
			Size: int64(len(e.data)), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	err := tw.Close()
	return buf.Bytes(), err
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int               `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func writeArchive(out, name string, entries []entry, entrypoint, cmd, labels list) error {
	layer, err := layerTar(entries)
	if err != nil {
		return err
	}
	lbl := map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		lbl[k] = v
	}
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string(entrypoint), "Cmd": []string(cmd), "Labels": lbl,
			"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: len(config)},
		"layers": []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar", Digest: digest(layer), Size: len(layer)}},
	})
	if err != nil {
		return err
	}
	_, tag, _ := strings.Cut(path.Base(name), ":")
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest(manifest), Size: len(manifest),
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"},
			Annotations: map[string]string{"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}},
	})
	if err != nil {
		return err
	}
	var blobs []entry
	blobs = append(blobs, entry{name: "blobs/", mode: 0o755, kind: tar.TypeDir}, entry{name: "blobs/sha256/", mode: 0o755, kind: tar.TypeDir})
	for _, b := range [][]byte{layer, config, manifest} {
		blobs = append(blobs, entry{name: "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:"), data: b, mode: 0o644, kind: tar.TypeReg})
	}
	blobs = append(blobs,
		entry{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`), mode: 0o644, kind: tar.TypeReg},
		entry{name: "index.json", data: index, mode: 0o644, kind: tar.TypeReg})
	archive, err := layerTar(blobs)
	if err != nil {
		return err
	}
	return os.WriteFile(out, archive, 0o644)
}
