{{/* Names, labels and required values shared by the templates. */}}

{{- define "percolate-node.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "percolate-node.tenant" -}}
{{- required "tenant.id is required: one release per tenant ([a-z0-9][a-z0-9-]{0,62})" .Values.tenant.id }}
{{- end }}

{{- define "percolate-node.fullname" -}}
{{- $full := "" }}
{{- if .Values.fullnameOverride }}
{{- $full = .Values.fullnameOverride }}
{{- else }}
{{- $name := include "percolate-node.name" . }}
{{- $full = ternary .Release.Name (printf "%s-%s" .Release.Name $name) (contains $name .Release.Name) }}
{{- end }}
{{- if gt (len $full) 52 }}
{{- fail (printf "the release's full name %q is %d characters; at most 52 fit (PVC and Secret names get suffixes): use a shorter release name or fullnameOverride, never a truncated one that two tenants could share" $full (len $full)) }}
{{- end }}
{{- $full }}
{{- end }}

{{/* The tenant label is in every selector: a release can only ever select its own tenant's pods. */}}
{{- define "percolate-node.selectorLabels" -}}
app.kubernetes.io/name: {{ include "percolate-node.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
percolate.dev/tenant: {{ include "percolate-node.tenant" . }}
{{- end }}

{{- define "percolate-node.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "percolate-node.selectorLabels" . }}
app.kubernetes.io/component: node
app.kubernetes.io/part-of: percolate
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.tenant.region }}
percolate.dev/region: {{ . }}
{{- end }}
{{- end }}

{{- define "percolate-node.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "percolate-node.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "percolate-node.host" -}}
{{- printf "%s.%s" (include "percolate-node.tenant" .) (required "tenant.domain is required: the API is published at <tenant.id>.<tenant.domain>" .Values.tenant.domain) }}
{{- end }}

{{/* The client certificate (towards the reading service) and the server certificate (towards tenants). */}}
{{- define "percolate-node.clientSecretName" -}}
{{- if .Values.certificate.certManager.enabled }}
{{- printf "%s-client-tls" (include "percolate-node.fullname" .) }}
{{- else }}
{{- required "certificate.existingSecret is required when certificate.certManager.enabled is false (tls.crt with the tenant URI SAN and clientAuth, tls.key, ca.crt)" .Values.certificate.existingSecret }}
{{- end }}
{{- end }}

{{- define "percolate-node.serverSecretName" -}}
{{- if .Values.certificate.certManager.enabled }}
{{- printf "%s-server-tls" (include "percolate-node.fullname" .) }}
{{- else }}
{{- required "certificate.existingServerSecret is required when certificate.certManager.enabled is false (tls.crt with serverAuth and the DNS name <tenant.id>.<tenant.domain>, tls.key, ca.crt)" .Values.certificate.existingServerSecret }}
{{- end }}
{{- end }}

{{- define "percolate-node.spiffeId" -}}
{{- printf "spiffe://percolate/tenant/%s" (include "percolate-node.tenant" .) }}
{{- end }}

{{/*
Backup values that cannot work together; refused at render time.
*/}}
{{- define "percolate-node.backupChecks" -}}
{{- $b := .Values.backup }}
{{- if $b.url }}
{{- $scheme := regexFind "^[a-z][a-z0-9+.-]*://" $b.url }}
{{- if not (has $scheme (list "s3://" "gs://" "az://" "azure://" "abfs://" "abfss://")) }}
{{- fail (printf "backup.url %q: use object storage (s3://bucket/prefix, gs://, az://); a folder in the pod would sit beside the data it backs up" $b.url) }}
{{- end }}
{{- if and $b.replica.url (eq $b.replica.url $b.url) }}
{{- fail "backup.replica.url is backup.url: the redundancy copy must be another bucket (another region)" }}
{{- end }}
{{- else }}
{{- if or $b.replica.url $b.credentialsSecret }}
{{- fail "backup.replica.url and backup.credentialsSecret need backup.url: without it the node takes no backups" }}
{{- end }}
{{- end }}
{{- end }}

{{/* High availability: the Lease, the replica certificate's Secret and the name it carries. */}}
{{- define "percolate-node.leaseName" -}}
{{- default (printf "%s-leader" (include "percolate-node.fullname" .)) .Values.ha.leaseName }}
{{- end }}

{{- define "percolate-node.replicaSecretName" -}}
{{- if .Values.certificate.certManager.enabled }}
{{- printf "%s-replica-tls" (include "percolate-node.fullname" .) }}
{{- else }}
{{- required "ha.existingReplicaSecret is required when ha.enabled and certificate.certManager.enabled is false (tls.crt with URI SAN spiffe://percolate/tenant/<id>/replica, server and client auth, tls.key, ca.crt)" .Values.ha.existingReplicaSecret }}
{{- end }}
{{- end }}

{{/* With HA, the node's env (list items): the pod's own name and what follows from it. */}}
{{- define "percolate-node.haEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
# the replica's name in the Lease, and where its peer dials it (the headless Service's pod name)
- name: PERCOLATE_NODE_REPLICA_ID
  value: "$(POD_NAME)"
# only ordinal 0 may start the tenant with an empty copy: when HA is enabled on an
# existing node it holds the data, and the new, empty replica 1 must follow it
- name: PERCOLATE_NODE_HA_BOOTSTRAP_REPLICA
  value: "{{ include "percolate-node.fullname" . }}-0"
- name: PERCOLATE_NODE_REPLICATION_ADVERTISE
  value: "$(POD_NAME).{{ include "percolate-node.replicationServerName" . }}:{{ .Values.ha.replicationPort }}"
{{- end }}

{{/* The headless Service's name: on the replica certificate, and what a replica checks its peer against. */}}
{{- define "percolate-node.replicationServerName" -}}
{{- printf "%s-headless.%s.svc.cluster.local" (include "percolate-node.fullname" .) .Release.Namespace }}
{{- end }}

{{/*
The node's extraEnv as YAML (list items, to follow the chart's own env), or a render
failure when an item names a variable the chart already sets (its ConfigMap or its env:
Kubernetes would keep one of the two without a word), one that an earlier item set, or one
in a family the chart manages through its values, on or off (a backup or HA setting without
backup.url or ha.enabled would miss its volumes, ports and network policies). Called with a
dict: where (the value's path, for the message), chartNames (the names the chart sets),
extraEnv (the list) and managed (name prefix -> the values that manage it).
*/}}
{{- define "percolate-node.extraEnv" -}}
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
{{- range $prefix, $values := $.managed }}
{{- if hasPrefix $prefix $item.name }}
{{- fail (printf "%s[%d] sets %s: the chart manages %s* through %s, whether on or off (without them the volumes, ports and network policies such a setting needs are missing); set those values instead" $.where $i $item.name $prefix $values) }}
{{- end }}
{{- end }}
{{- $_ := set $seen $item.name (printf "%s[%d]" $.where $i) }}
{{- end }}
{{- with .extraEnv }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
The node's extraEnvFrom as YAML (list items, before the chart's ConfigMap), or a render
failure when a source's prefix could produce a name in a family the chart manages (see
above): the keys inside a Secret or ConfigMap are unknown at render time, its prefix is
not. Called with a dict: where, extraEnvFrom (the list) and managed.
*/}}
{{- define "percolate-node.extraEnvFrom" -}}
{{- range $i, $source := .extraEnvFrom }}
{{- with $source.prefix }}
{{- $sourcePrefix := . }}
{{- range $family, $values := $.managed }}
{{- if or (hasPrefix $sourcePrefix $family) (hasPrefix $family $sourcePrefix) }}
{{- fail (printf "%s[%d].prefix %s could set %s* variables, which the chart manages through %s; choose a prefix outside that family" $.where $i $sourcePrefix $family $values) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with .extraEnvFrom }}
{{- toYaml . }}
{{- end }}
{{- end }}
