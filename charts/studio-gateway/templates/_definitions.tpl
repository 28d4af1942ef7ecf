{{/* Names, labels and the shared pieces of the templates. */}}

{{- define "studio-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix; 63 characters at most (DNS label), minus room for suffixes. */}}
{{- define "studio-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "studio-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "studio-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "studio-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "studio-gateway.labels" -}}
helm.sh/chart: {{ include "studio-gateway.chart" . }}
{{ include "studio-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: studio-gateway
{{- end }}

{{/* The operator image; also the default sidecar and test image. */}}
{{- define "studio-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "studio-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "studio-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "studio-gateway.webhookServiceName" -}}
{{- printf "%s-webhook" (include "studio-gateway.fullname" .) }}
{{- end }}

{{- define "studio-gateway.webhookTLSSecretName" -}}
{{- printf "%s-webhook-tls" (include "studio-gateway.fullname" .) }}
{{- end }}

{{/* DNS names the API server may use to reach the webhook Service. */}}
{{- define "studio-gateway.webhookDNSNames" -}}
{{- $svc := include "studio-gateway.webhookServiceName" . }}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | toJson }}
{{- end }}

{{/* Secret name and key of the Redis URL the operator reads, as "name key"; empty for none. */}}
{{- define "studio-gateway.redisSecretName" -}}
{{- if eq .Values.redis.mode "external" }}
{{- required "redis.external.existingSecret is required when redis.mode is external" .Values.redis.external.existingSecret }}
{{- else if eq .Values.redis.mode "embedded" }}
{{- .Values.redis.embedded.auth.existingSecret | default (printf "%s-redis" (include "studio-gateway.fullname" .)) }}
{{- end }}
{{- end }}

{{- define "studio-gateway.redisSecretKey" -}}
{{- if eq .Values.redis.mode "external" }}
{{- .Values.redis.external.urlKey }}
{{- else }}
{{- print "url" }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security Standard, at pod level. */}}
{{- define "studio-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted Pod Security Standard, repeated per container so that each one is complete. */}}
{{- define "studio-gateway.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Sidecar defaults handed to the operator's webhook (GATEWAY_OPERATOR_SIDECAR). */}}
{{- define "studio-gateway.sidecarJSON" -}}
{{- $sidecar := deepCopy .Values.sidecar }}
{{- if not $sidecar.image }}
{{- $_ := set $sidecar "image" (include "studio-gateway.image" .) }}
{{- end }}
{{- toJson $sidecar }}
{{- end }}

{{/*
The chart-generated webhook TLS as JSON {"ca", "crt", "key"} (base64), for webhook.yaml and the
operator's restart checksum. It reuses the Secret of an earlier install (lookup) so that upgrades
do not rotate it; helm template has no cluster, so there it always generates. Generated once
per render and kept in .Values: every template must see the same CA and key.
*/}}
{{- define "studio-gateway.webhookTLS" -}}
{{- if not (hasKey .Values "__webhookTLS") }}
{{- $secretName := include "studio-gateway.webhookTLSSecretName" . }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace $secretName }}
{{- $data := dict }}
{{- if and $existing $existing.data }}
{{- $data = $existing.data }}
{{- end }}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") }}
{{- $_ := set .Values "__webhookTLS" (dict "ca" (index $data "ca.crt") "crt" (index $data "tls.crt") "key" (index $data "tls.key")) }}
{{- else }}
{{- $days := int .Values.webhook.generatedCertificate.validityDays }}
{{- $service := include "studio-gateway.webhookServiceName" . }}
{{- $ca := genCA (printf "%s-webhook-ca" (include "studio-gateway.fullname" .)) $days }}
{{- $cert := genSignedCert (printf "%s.%s.svc" $service .Release.Namespace) nil (include "studio-gateway.webhookDNSNames" . | fromJsonArray) $days $ca }}
{{- $_ := set .Values "__webhookTLS" (dict "ca" ($ca.Cert | b64enc) "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc)) }}
{{- end }}
{{- end }}
{{- get .Values "__webhookTLS" | toJson }}
{{- end }}

{{/* The kopf peering object the operator replicas elect through. */}}
{{- define "studio-gateway.peeringName" -}}
{{ include "studio-gateway.fullname" . }}-operator
{{- end }}
