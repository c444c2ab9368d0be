{{/* Names and labels shared by the templates. */}}
{{- define "sigil.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sigil.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: sigil
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sigil.image" -}}
{{- $ := index . 0 -}}
{{- printf "%s/%s:%s" $.Values.image.registry (index . 1) (default $.Chart.AppVersion $.Values.image.tag) -}}
{{- end -}}

{{- define "sigil.trustDomain" -}}
{{- required "global.spire.trustDomain is required" .Values.global.spire.trustDomain -}}
{{- end -}}

{{- define "sigil.clusterName" -}}
{{- required "global.spire.clusterName is required" .Values.global.spire.clusterName -}}
{{- end -}}

{{- define "sigil.server" -}}{{ include "sigil.fullname" . }}-server{{- end -}}
{{- define "sigil.agent" -}}{{ include "sigil.fullname" . }}-agent{{- end -}}
{{- define "sigil.csi" -}}{{ include "sigil.fullname" . }}-csi-driver{{- end -}}
{{- define "sigil.bundle" -}}{{ include "sigil.fullname" . }}-bundle{{- end -}}
