{{/* Names, labels and derived values shared by the templates. */}}

{{- define "percolate-reading.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "percolate-reading.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := include "percolate-reading.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "percolate-reading.selectorLabels" -}}
app.kubernetes.io/name: {{ include "percolate-reading.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "percolate-reading.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "percolate-reading.selectorLabels" . }}
app.kubernetes.io/component: reading
app.kubernetes.io/part-of: percolate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "percolate-reading.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "percolate-reading.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "percolate-reading.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The selected GPU tier's preset; an unknown tier stops the render. */}}
{{- define "percolate-reading.tier" -}}
{{- $tier := get .Values.gpu.tiers .Values.gpu.tier }}
{{- if not $tier }}
{{- fail (printf "gpu.tier %q is not one of %s" .Values.gpu.tier (keys .Values.gpu.tiers | sortAlpha | join ", ")) }}
{{- end }}
{{- toYaml $tier }}
{{- end }}

{{- define "percolate-reading.tlsSecretName" -}}
{{- if .Values.tls.certManager.enabled }}
{{- printf "%s-tls" (include "percolate-reading.fullname" .) }}
{{- else }}
{{- required "tls.existingSecret is required when tls.certManager.enabled is false" .Values.tls.existingSecret }}
{{- end }}
{{- end }}

{{/* Worst-case seconds of the longest call the frontend accepts (limits x costs). */}}
{{- define "percolate-reading.longestCallSeconds" -}}
{{- $audio := mulf (float64 .Values.limits.maxAudioSeconds) (float64 .Values.drain.secondsPerAudioSecond) }}
{{- $pages := mulf (float64 .Values.limits.maxPages) (float64 .Values.drain.secondsPerPage) }}
{{- maxf $audio $pages | ceil | int }}
{{- end }}

{{/* The frontend's drain: graceSeconds, or the longest call + 10 s; never shorter than that call. */}}
{{- define "percolate-reading.drainGraceSeconds" -}}
{{- $longest := include "percolate-reading.longestCallSeconds" . | int }}
{{- $grace := int .Values.drain.graceSeconds }}
{{- if eq $grace 0 }}
{{- add $longest 10 }}
{{- else if lt $grace $longest }}
{{- fail (printf "drain.graceSeconds=%d is shorter than the longest call the frontend accepts (%d s: limits.maxAudioSeconds=%v x drain.secondsPerAudioSecond=%v, limits.maxPages=%v x drain.secondsPerPage=%v); a drain would cut it (CANCELLED, not retried). Raise drain.graceSeconds (or set 0 to size it), or lower the limits" $grace $longest .Values.limits.maxAudioSeconds .Values.drain.secondsPerAudioSecond .Values.limits.maxPages .Values.drain.secondsPerPage) }}
{{- else }}
{{- $grace }}
{{- end }}
{{- end }}

{{/* Seconds the frontend needs from deletion to exit: preStop sleep, then its drain. */}}
{{- define "percolate-reading.frontendStopSeconds" -}}
{{- add .Values.drain.preStopSeconds (include "percolate-reading.drainGraceSeconds" . | int) }}
{{- end }}

{{- define "percolate-reading.terminationGraceSeconds" -}}
{{- add (include "percolate-reading.frontendStopSeconds" . | int) .Values.drain.tritonExitSeconds }}
{{- end }}

{{/* Both Service names, every form a client in the cluster may dial, and localhost for the probe. */}}
{{- define "percolate-reading.dnsNames" -}}
{{- $full := include "percolate-reading.fullname" . }}
{{- range $svc := list $full (printf "%s-headless" $full) }}
- {{ $svc }}
- {{ $svc }}.{{ $.Release.Namespace }}
- {{ $svc }}.{{ $.Release.Namespace }}.svc
- {{ $svc }}.{{ $.Release.Namespace }}.svc.cluster.local
{{- end }}
- localhost
{{- range .Values.tls.certManager.extraDnsNames }}
- {{ . }}
{{- end }}
{{- end }}


{{/* The shared TensorRT engine cache is on (triton.engineCache.type=persistentVolumeClaim). */}}
{{- define "percolate-reading.engineCacheShared" -}}
{{- if eq .Values.triton.engineCache.type "persistentVolumeClaim" }}true{{ end }}
{{- end }}

{{/* The claim holding the shared engine cache: the user's, or the chart's one per GPU tier. */}}
{{- define "percolate-reading.engineCacheClaim" -}}
{{- default (printf "%s-trt-%s" (include "percolate-reading.fullname" .) (lower .Values.gpu.tier)) .Values.triton.engineCache.existingClaim }}
{{- end }}

{{/* The GPU product the pods are pinned to: engines are only valid on the model they were built on. */}}
{{- define "percolate-reading.gpuProduct" -}}
{{- $tier := include "percolate-reading.tier" . | fromYaml }}
{{- $selector := merge (deepCopy .Values.nodeSelector) $tier.nodeSelector }}
{{- $product := get $selector "nvidia.com/gpu.product" }}
{{- if not $product }}
{{- fail "triton.engineCache.type=persistentVolumeClaim needs a nodeSelector on nvidia.com/gpu.product (GPU Feature Discovery's label): TensorRT engines are only valid on the GPU model they were built on, and the cache is kept per product" }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" $product) }}
{{- fail (printf "nvidia.com/gpu.product %q cannot name a cache folder" $product) }}
{{- end }}
{{- $product }}
{{- end }}

{{/* The engine-cache init step (and sidecar) command line. */}}
{{- define "percolate-reading.engineCacheRestore" -}}
{{- $cache := .Values.triton.engineCache }}
{{- $shared := include "percolate-reading.engineCacheShared" . }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]*$" .Values.triton.image.tag) }}
{{- fail (printf "triton.image.tag %q cannot name an engine cache folder" .Values.triton.image.tag) }}
{{- end }}
{{- if and $shared (eq .Values.modelRepository.source "objectStorage") (not $cache.version) }}
{{- fail "triton.engineCache.version is required with modelRepository.source=objectStorage and a persistent engine cache: the chart cannot see the store's contents, and engines built for other weights must not be reused. Set it to the repository's version and change it whenever the repository changes" }}
{{- end }}
{{- if and $shared (not $cache.existingClaim) (not $cache.storageClassName) }}
{{- fail "triton.engineCache.type=persistentVolumeClaim needs triton.engineCache.storageClassName (a ReadWriteMany class: EFS, Filestore, Azure Files, NFS...) or triton.engineCache.existingClaim" }}
{{- end }}
command:
  - python
  - /etc/percolate/engine-cache/engine_cache.py
  - restore
  - --repository=/app/model_repository
  - --config-name={{ .Values.triton.modelConfigName }}
  - --cache-path=/tmp/triton_trt_cache
  - --local=/trt-engines
  {{- if $shared }}
  - --shared=/engine-cache
  - --release={{ .Values.triton.image.tag }}
  - --keep-days={{ $cache.keepDays }}
  {{- end }}
  {{- with $cache.version }}
  - --version={{ . }}
  {{- end }}
{{- end }}

{{/* Triton's env (list items), before triton.extraEnv. */}}
{{- define "percolate-reading.tritonEnv" -}}
# caches that default to $HOME (CUDA's JIT cache) go to the writable scratch
- name: HOME
  value: /tmp
- name: TRITON_HTTP_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "percolate-reading.fullname" . }}-triton-http
      key: token
{{- end }}

{{/*
A container's extraEnv as YAML (list items, to follow the chart's own env), or a render
failure when an item names a variable the chart already sets for that container (its
ConfigMap or its env: Kubernetes would keep one of the two without a word) or one that
an earlier item set. Called with a dict: where (the value's path, for the message),
chartNames (the names the chart sets) and extraEnv (the list).
*/}}
{{- define "percolate-reading.extraEnv" -}}
{{- $seen := dict }}
{{- range .chartNames }}
{{- $_ := set $seen . "" }}
{{- end }}
{{- range $i, $item := .extraEnv }}
{{- if hasKey $seen $item.name }}
{{- $earlier := get $seen $item.name }}
{{- if $earlier }}
{{- fail (printf "%s[%d] sets %s again (%s set it first): Kubernetes would silently keep the last; list each variable once" $.where $i $item.name $earlier) }}
{{- else }}
{{- fail (printf "%s[%d] sets %s, which the chart sets for this container itself: Kubernetes would silently replace the chart's value; set it through the chart's values (README) or leave it out" $.where $i $item.name) }}
{{- end }}
{{- end }}
{{- $_ := set $seen $item.name (printf "%s[%d]" $.where $i) }}
{{- end }}
{{- with .extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}
