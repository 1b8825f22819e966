{{/* The chart name, or nameOverride. */}}
{{- define "avx-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name: fullnameOverride, else release-chart (once if they overlap). */}}
{{- define "avx-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "avx-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "avx-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "avx-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "avx-gateway.labels" -}}
helm.sh/chart: {{ include "avx-gateway.chart" . }}
{{ include "avx-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ include "avx-gateway.tag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "avx-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "avx-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image tag: image.tag, else the chart's appVersion; "latest" is refused. */}}
{{- define "avx-gateway.tag" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if eq $tag "latest" }}
{{- fail "image.tag: pin a version, not \"latest\" (a rollback or a new node would pull another image)" }}
{{- end }}
{{- $tag }}
{{- end }}

{{/* The gateway config, with {{ .Values.* }} expanded. */}}
{{- define "avx-gateway.config" -}}
{{- tpl .Values.config . }}
{{- end }}

{{/* The TLS Secret's name (tls.enabled needs one). */}}
{{- define "avx-gateway.tlsSecret" -}}
{{- required "tls.secretName: name the kubernetes.io/tls Secret to mount when tls.enabled" .Values.tls.secretName }}
{{- end }}
