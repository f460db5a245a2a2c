{{- define "clarion.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "clarion.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "clarion.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The config file: the user's, or the repository's example with the metrics
listener opened to the pod network (the probes come from the kubelet). */}}
{{- define "clarion.config" -}}
{{- if .Values.config -}}
{{- .Values.config -}}
{{- else -}}
{{- .Files.Get "files/clarion.toml" | replace "listen = \"127.0.0.1:9464\"" (printf "listen = \"0.0.0.0:%d\"" (int .Values.metricsPort)) -}}
{{- end -}}
{{- end -}}

{{/* What the daemon's pods and the drill's pods share, so that the two cannot drift
apart: the drill reads the same config and secrets and must run as confined as the
daemon. */}}

{{- define "clarion.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The pod's securityContext: non-root, the runtime's default seccomp profile. */}}
{{- define "clarion.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container's securityContext: no escalation, no capabilities, read-only root. */}}
{{- define "clarion.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* The container's envFrom (existingSecret) and env, for the config's
{ env = "NAME" } secrets; empty when neither is set. */}}
{{- define "clarion.env" -}}
{{- if .Values.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.existingSecret }}
{{- end }}
{{- with .Values.env }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The config file at /etc/clarion/clarion.toml: the container's mount and the
pod's volume (the chart's ConfigMap). */}}
{{- define "clarion.configVolumeMount" -}}
- name: config
  mountPath: /etc/clarion
  readOnly: true
{{- end -}}

{{- define "clarion.configVolume" -}}
- name: config
  configMap:
    name: {{ include "clarion.fullname" . }}
{{- end -}}

{{/* nodeSelector, tolerations and affinity: the drill needs the daemon's network
reach (the Kafka brokers), so it is placed where the daemon may be. */}}
{{- define "clarion.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
