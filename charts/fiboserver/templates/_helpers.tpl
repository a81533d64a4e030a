{{/*
Names: every object is named after the release (fiboserver-dev, fiboserver-prod),
as the kustomize overlays name theirs, so the two front doors give the same names.
*/}}

{{/* The labels that select this release's pods: the kustomize overlays' three. */}}
{{- define "fiboserver.selectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/name: fiboserver
app.kubernetes.io/part-of: fiboserver
{{- end }}

{{/* Helm's own labels, on each object's metadata only: never in a selector or the
pod template, so a chart upgrade alone neither rolls the pods nor orphans them. */}}
{{- define "fiboserver.helmLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ include "fiboserver.tag" . | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "fiboserver.labels" -}}
{{ include "fiboserver.selectorLabels" . }}
{{ include "fiboserver.helmLabels" . }}
{{- end }}

{{- define "fiboserver.tag" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "fiboserver.image" -}}
{{ .Values.image.repository }}:{{ include "fiboserver.tag" . }}
{{- end }}

{{/* The URL prefix of every route: / + the environment in lower case. */}}
{{- define "fiboserver.prefix" -}}
/{{ lower .Values.config.env }}
{{- end }}

{{/* The service's own defaults for the ports the pod spec names (8080, 9464). */}}
{{- define "fiboserver.port" -}}
{{ .Values.config.port | default 8080 }}
{{- end }}

{{- define "fiboserver.metricsPort" -}}
{{ .Values.config.metrics_port | default 9464 }}
{{- end }}

{{/* The config file as the service reads it. */}}
{{- define "fiboserver.configYaml" -}}
# fiboserver configuration from the Helm values `config` (keys: the project README,
# "Configuration").
{{ toYaml .Values.config }}
{{- end }}

{{/* Hashed like kustomize's configMapGenerator: a config change is a new name,
so the pod template changes and the pods roll; the old pods keep theirs. */}}
{{- define "fiboserver.configMapName" -}}
{{ .Release.Name }}-config-{{ include "fiboserver.configYaml" . | sha256sum | trunc 10 }}
{{- end }}

{{/* What the schema cannot say (it relates two keys): the service refuses a
metrics port equal to its HTTP port. */}}
{{- define "fiboserver.check" -}}
{{- if eq (include "fiboserver.port" .) (include "fiboserver.metricsPort" .) }}
{{- fail (printf "config.metrics_port must differ from config.port (both are %s)" (include "fiboserver.port" .)) }}
{{- end }}
{{- end }}

{{/* k8s/monitoring's labels: the objects belong to no one environment. */}}
{{- define "fiboserver.monitoringLabels" -}}
app.kubernetes.io/component: monitoring
app.kubernetes.io/name: fiboserver
app.kubernetes.io/part-of: fiboserver
{{ include "fiboserver.helmLabels" . }}
{{- end }}
