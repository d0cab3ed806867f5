{{/* Name prefix of every object: the release name, with "dowser" in it. */}}
{{- define "dowser.fullname" -}}
{{- if contains "dowser" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-dowser" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dowser.labels" -}}
app.kubernetes.io/part-of: dowser
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "agent") */}}
{{- define "dowser.selectorLabels" -}}
app.kubernetes.io/name: dowser
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dowser.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The handlers enabled, comma-separated (the agent's DOWSER_HANDLERS). */}}
{{- define "dowser.handlers" -}}
{{- $on := list -}}
{{- range $name := list "modbus" "opcua" "ble" "serial" "mdns" "udev" "onvif" "bacnet" "external" -}}
{{- if (index $.Values.handlers $name).enabled -}}
{{- $on = append $on $name -}}
{{- end -}}
{{- end -}}
{{- join "," $on -}}
{{- end -}}
