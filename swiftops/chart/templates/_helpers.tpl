{{/* Every top-level template starts with this: with no `manifest` value (a plain `helm install` of the chart's
defaults) the pod runs `defaultManifest`. Idempotent, so template order does not matter. */}}
{{- define "swiftops.init" -}}
{{- if not .Values.manifest -}}
{{- $_ := set .Values "manifest" (deepCopy .Values.defaultManifest) -}}
{{- $_ := set .Values "resolved" (deepCopy .Values.defaultResolved) -}}
{{- else if not .Values.resolved -}}
{{- fail "values: a `manifest` needs its `resolved` values (GPU count, image, port, cache path, /dev/shm size, drain timeout), which swiftops derives from it: write both with `swiftops render --target helm-values -f MANIFEST.yaml`" -}}
{{- end -}}
{{- end }}

{{/* Object names: the release name (swiftops apply uses the manifest's metadata.name). */}}
{{- define "swiftops.fullname" -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end }}

{{/* A Job's pod template is immutable: each manifest gets its own Job, named after a hash of the manifest, so
a changed manifest re-applies (Helm deletes the old Job; results live on the cache volume). */}}
{{- define "swiftops.jobName" -}}
{{- printf "%s-%s" (include "swiftops.fullname" . | trunc 44 | trimSuffix "-") (toYaml .Values.manifest | sha256sum | trunc 8) -}}
{{- end }}

{{- define "swiftops.selectorLabels" -}}
app.kubernetes.io/name: swiftops
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "swiftops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "swiftops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ ternary "server" "inference-job" (include "swiftops.isServer" . | eq "true") }}
{{- range $key, $value := (dig "metadata" "labels" dict .Values.manifest) }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* "true" when a KEDA ScaledObject scales the server on its queue (instead of the plain HPA). */}}
{{- define "swiftops.useKeda" -}}
{{- and .Values.autoscaling.enabled (dig "keda" "serverAddress" "" .Values.autoscaling) (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") -}}
{{- end }}

{{- define "swiftops.isServer" -}}
{{- eq .Values.manifest.kind "Deployment" -}}
{{- end }}

{{/* Values derived from the manifest come computed, as `resolved` (swiftops.manifest.render.resolved_values):
the chart computes none of them a second time. */}}
{{- define "swiftops.gpuCount" -}}
{{- .Values.resolved.gpuCount | int -}}
{{- end }}

{{- define "swiftops.shmSize" -}}
{{- .Values.resolved.shmSize | default "" -}}
{{- end }}

{{- define "swiftops.image" -}}
{{- .Values.resolved.image -}}
{{- end }}

{{- define "swiftops.port" -}}
{{- .Values.resolved.port | int -}}
{{- end }}

{{- define "swiftops.cachePath" -}}
{{- .Values.resolved.cachePath -}}
{{- end }}

{{- define "swiftops.cacheClaim" -}}
{{- dig "cache" "existing_claim" (printf "%s-cache" (include "swiftops.fullname" .)) .Values.manifest.spec -}}
{{- end }}

{{/* true when more than one pod may mount a ReadWriteOnce cache claim */}}
{{- define "swiftops.cacheIsRWO" -}}
{{- and (hasKey .Values.manifest.spec "cache") (eq (dig "cache" "access_mode" "ReadWriteOnce" .Values.manifest.spec) "ReadWriteOnce") -}}
{{- end }}

{{/* The pod spec shared by the Deployment and the Job: it runs `swiftops apply` on the mounted manifest. */}}
{{- define "swiftops.podSpec" -}}
{{- $spec := .Values.manifest.spec -}}
{{- $isServer := include "swiftops.isServer" . | eq "true" -}}
{{- $gpus := include "swiftops.gpuCount" . | int -}}
{{- $shm := include "swiftops.shmSize" . -}}
{{- $cachePath := include "swiftops.cachePath" . -}}
{{- $placement := dig "placement" dict $spec -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- if $isServer }}
terminationGracePeriodSeconds: {{ add (.Values.resolved.shutdownTimeoutSeconds | int) .Values.preStopSleepSeconds .Values.terminationGraceExtraSeconds }}
{{- else }}
restartPolicy: Never
{{- end }}
{{- with $placement.node_selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := $placement.tolerations | default list }}
{{- $gpuResource := dig "resources" "gpu" "resource" "nvidia.com/gpu" $spec }}
{{- $gpuTolerated := false }}
{{- range $tolerations }}
{{- if or (eq (.key | default "") $gpuResource) (and (not .key) (eq (.operator | default "Equal") "Exists")) }}
{{- $gpuTolerated = true }}
{{- end }}
{{- end }}
{{- /* GPU nodes carry the GPU operator's taint (nvidia.com/gpu:NoSchedule): pods that ask for GPUs tolerate it
unless the manifest sets its own toleration for that key or placement.gpu_toleration: false. */}}
{{- $addGpuToleration := and (gt $gpus 0) (not $gpuTolerated) (dig "gpu_toleration" true $placement) }}
{{- if or $tolerations $addGpuToleration }}
tolerations:
  {{- range $tolerations }}
  - operator: {{ .operator | default "Equal" }}
    {{- with .key }}
    key: {{ . | quote }}
    {{- end }}
    {{- with .value }}
    value: {{ . | quote }}
    {{- end }}
    {{- with .effect }}
    effect: {{ . }}
    {{- end }}
    {{- if hasKey . "toleration_seconds" }}
    tolerationSeconds: {{ .toleration_seconds | int }}
    {{- end }}
  {{- end }}
  {{- if $addGpuToleration }}
  - key: {{ $gpuResource | quote }}
    operator: Exists
    effect: NoSchedule
  {{- end }}
{{- end }}
{{- with $placement.spread }}
topologySpreadConstraints:
  {{- range . }}
  - maxSkew: 1
    topologyKey: {{ ternary "kubernetes.io/hostname" "topology.kubernetes.io/zone" (eq . "node") }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "swiftops.selectorLabels" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- with $placement.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $placement.runtime_class_name }}
runtimeClassName: {{ . }}
{{- end }}
{{- with $placement.priority_class_name }}
priorityClassName: {{ . }}
{{- end }}
containers:
  - name: swiftops
    image: {{ include "swiftops.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    # The same code path as on a laptop: validate the manifest, then exec `swiftops deploy|infer`.
    command: ["swiftops", "apply", "-f", "/etc/swiftops/manifest.yaml"]
    workingDir: /workspace
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    {{- if $isServer }}
    ports:
      - name: http
        containerPort: {{ include "swiftops.port" . }}
        protocol: TCP
    {{- end }}
    env:
      - name: HF_HOME
        value: {{ printf "%s/huggingface" $cachePath | quote }}
      - name: MODELSCOPE_CACHE
        value: {{ printf "%s/modelscope" $cachePath | quote }}
      # The root filesystem is read-only: compiled kernels (triton, torch.compile, vLLM) persist on the cache
      # volume, everything else that wants a home goes to the /tmp emptyDir.
      - name: XDG_CACHE_HOME
        value: {{ printf "%s/xdg" $cachePath | quote }}
      - name: HOME
        value: /tmp
      {{- with dig "server" "api_key_secret" nil $spec }}
      - name: SWIFTOPS_API_KEY
        valueFrom:
          secretKeyRef:
            name: {{ .name }}
            key: {{ .key }}
      {{- end }}
      {{- range $spec.env }}
      - name: {{ .name }}
        {{- if .secret }}
        valueFrom:
          secretKeyRef:
            name: {{ .secret.name }}
            key: {{ .secret.key }}
        {{- else }}
        value: {{ .value | quote }}
        {{- end }}
      {{- end }}
    {{- $limits := dict }}
    {{- $requests := dict }}
    {{- if gt $gpus 0 }}
    {{- $_ := set $limits (dig "resources" "gpu" "resource" "nvidia.com/gpu" $spec) $gpus }}
    {{- end }}
    {{- range $name := list "cpu" "memory" }}
    {{- with dig "resources" $name "" $spec }}
    {{- $_ := set $limits $name . }}
    {{- $_ := set $requests $name . }}
    {{- end }}
    {{- end }}
    resources:
      limits:
        {{- toYaml $limits | nindent 8 }}
      requests:
        {{- toYaml $requests | nindent 8 }}
    {{- if $isServer }}
    startupProbe:
      httpGet:
        path: /health
        port: http
      periodSeconds: {{ .Values.probes.startup.periodSeconds }}
      failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    readinessProbe:
      httpGet:
        path: /ready
        port: http
      periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
      failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    livenessProbe:
      httpGet:
        path: /health
        port: http
      periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
      failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
    lifecycle:
      preStop:
        exec:
          # Let endpoints stop routing here before SIGTERM starts the server's drain.
          command: ["sleep", "{{ .Values.preStopSleepSeconds }}"]
    {{- end }}
    volumeMounts:
      - name: manifest
        mountPath: /etc/swiftops
        readOnly: true
      - name: cache
        mountPath: {{ $cachePath }}
      - name: tmp
        mountPath: /tmp
      - name: workspace
        mountPath: /workspace
      {{- if $shm }}
      - name: dshm
        mountPath: /dev/shm
      {{- end }}
volumes:
  - name: manifest
    configMap:
      name: {{ include "swiftops.fullname" . }}-manifest
  - name: cache
    {{- if hasKey $spec "cache" }}
    persistentVolumeClaim:
      claimName: {{ include "swiftops.cacheClaim" . }}
    {{- else }}
    emptyDir: {}
    {{- end }}
  - name: tmp
    emptyDir: {}
  - name: workspace
    emptyDir: {}
  {{- if $shm }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $shm }}
  {{- end }}
{{- end }}
