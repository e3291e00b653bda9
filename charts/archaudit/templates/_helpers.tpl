{{/*
Names. One full name for every object the release owns, so two releases never collide.
*/}}
{{- define "archaudit.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "archaudit.fullname" -}}
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

{{- define "archaudit.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "archaudit.selectorLabels" -}}
app.kubernetes.io/name: {{ include "archaudit.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "archaudit.labels" -}}
helm.sh/chart: {{ include "archaudit.chart" . }}
{{ include "archaudit.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: archaudit
{{- end }}

{{- define "archaudit.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "archaudit.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Service the apiserver calls; its DNS names are the SANs of the serving certificate. */}}
{{- define "archaudit.webhookService" -}}
{{- printf "%s-webhook" (include "archaudit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "archaudit.metricsService" -}}
{{- printf "%s-metrics" (include "archaudit.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret holding the serving certificate, whichever TLS mode made it. */}}
{{- define "archaudit.tlsSecret" -}}
{{- $tls := .Values.webhook.tls }}
{{- if eq $tls.mode "provided" }}
{{- required "webhook.tls.provided.secretName is required with webhook.tls.mode=provided" $tls.provided.secretName }}
{{- else }}
{{- default (printf "%s-webhook-tls" (include "archaudit.fullname" .)) $tls.secretName }}
{{- end }}
{{- end }}

{{- define "archaudit.certificateName" -}}
{{- printf "%s-webhook" (include "archaudit.fullname" .) }}
{{- end }}

{{- define "archaudit.registriesSecret" -}}
{{- default (printf "%s-registries" (include "archaudit.fullname" .)) .Values.registry.existingSecret }}
{{- end }}

{{- define "archaudit.hasRegistries" -}}
{{- if or .Values.registry.registriesYaml .Values.registry.existingSecret }}true{{ end }}
{{- end }}

{{- define "archaudit.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Files read by the operator when TLS comes from outside it (cert-manager, provided). */}}
{{- define "archaudit.tlsDir" -}}/etc/archaudit/tls{{- end }}
{{- define "archaudit.registriesDir" -}}/etc/archaudit/registries{{- end }}

{{/*
Sanity checks that a JSON schema cannot express (relations between values). Included once, from the
Deployment, so a bad combination fails the render with a message saying what to change.
*/}}
{{- define "archaudit.validate" -}}
{{- $w := .Values.webhook }}
{{- if ge (float64 $w.deadlineSeconds) (float64 $w.timeoutSeconds) }}
{{- fail (printf "webhook.deadlineSeconds (%v) must be below webhook.timeoutSeconds (%v): the operator answers before the apiserver gives up" $w.deadlineSeconds $w.timeoutSeconds) }}
{{- end }}
{{- if and (eq $w.tls.mode "provided") (not $w.caBundle) }}
{{- fail "webhook.caBundle (base64 PEM of the CA that signed webhook.tls.provided.secretName) is required with webhook.tls.mode=provided" }}
{{- end }}
{{- with .Values.registry.registriesYaml }}
{{- if hasKey (fromYaml .) "Error" }}
{{- fail (printf "registry.registriesYaml is not valid YAML: %s" (get (fromYaml .) "Error")) }}
{{- end }}
{{- end }}
{{- if and .Values.registry.registriesYaml .Values.registry.existingSecret }}
{{- fail "set registry.registriesYaml or registry.existingSecret, not both" }}
{{- end }}
{{- if and $w.url (eq $w.tls.mode "cert-manager") }}
{{- fail "webhook.url (out-of-cluster operator) cannot be combined with webhook.tls.mode=cert-manager: give webhook.caBundle instead" }}
{{- end }}
{{- end }}

